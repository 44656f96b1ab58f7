"""What ``keepalived -t`` must still accept for a new file to be known good; pure.

``keepalived -t`` costs a keepalived start plus a parse of every real server and its
health check -- at 1,000 real servers in one virtual server most of an event's work
(and super-linear: keepalived 2.2.7 takes about 2.7 times as long for twice the real
servers).  A member event changes one real-server block; everything else in the new
file is text keepalived already accepted, in the same place, when it checked an
earlier file.

:func:`to_check` compares a new rendered file with the last one keepalived accepted
(*validated*) and returns what keepalived must accept now:

* ``None`` when nothing in the new file is new: the same opening part (``global_defs``
  and, in one file, the VRRP part), the same virtual servers with the same headers in
  the same order, each still with a real server, and every real-server block one that
  stood in the same virtual server of *validated* (members left; nothing came);
* else, when only real-server blocks are new (members came), a smaller file: the
  same opening part, and each virtual server that gained blocks with its own header
  and only its new blocks -- the context keepalived checks a real server in (the
  virtual server's address family, port, mode) is there, unchanged;
* else (a virtual server came, went or changed its header, the opening part changed,
  a virtual server was left without real servers, a real server appears twice, or
  there is no *validated* file): the whole new file.

keepalived 2.2.7 checks a real-server block against its own virtual server and
``global_defs``; across the blocks of one virtual server it checks only that there is
one ("has no real servers - ignoring") and the quorum (1 unless set) against the sum of
their weights (``validate_check_config``).  The first sends the whole file to
keepalived; for the second, new blocks are checked beside enough accepted blocks of
weight > 0 that the sum meets the quorum as the whole virtual server's does, and a
virtual server with nothing new has its sum compared with the quorum here (short of
it: the whole file).  Of a block's ``weight`` keepalived checks only that it is
within 0 to 2^31 - 1 (``rs_weight_handler``), so a block that differs from an
accepted one only by a weight in that range is not new (:func:`shape`): a drain, or
a member back from one, brings nothing to check.  So every line of a file that is written has been accepted by
the real keepalived, in the virtual server it stands in, now or when an earlier file
was checked.  The caller keeps *validated* only for a file it had checked and wrote
itself (never one it found in place), and checks in full when told to recheck.

:class:`Accepted` remembers, beyond the last file, every real-server block keepalived
accepted in each virtual server (under the same opening part): a member that comes
back (suspended, then activated) or whose block was checked ahead of time -- while
its instance boots, before Stratos activates it (see ``Keepalived.vet``) -- brings
nothing new to check.  A virtual server that changed still has the sum of its weights
compared with the quorum here; when it falls short the whole file goes to keepalived,
whose verdict (a warning, so a refusal) is then the one that counts.

The text is the renderer's (:mod:`.render`): an opening brace ends a line, a closing
one stands alone, a real server's block opens at one indent (``real_server``) inside
a ``virtual_server`` block at none.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Set, Tuple

_VS = "\nvirtual_server "
_VS_END = "\n}"
_RS = "\n    real_server "
_RS_END = "\n    }\n"
_WEIGHT = "\n        weight "
_QUORUM = "\n    quorum "
#: keepalived 2.2.7's IPVS_WEIGHT_LIMIT (INT32_MAX): a real server's weight range
WEIGHT_LIMIT = 2 ** 31 - 1


def shape(block: str) -> str:
    """*block* without its weight's value when that is a weight keepalived accepts
    (what a weight-only change keeps); else *block* itself."""
    at = block.find(_WEIGHT)
    if at < 0:
        return block
    start = at + len(_WEIGHT)
    end = block.find("\n", start)
    value = block[start:end]
    if not (value.isdigit() and value.isascii() and int(value) <= WEIGHT_LIMIT):
        return block
    return block[:start] + block[end:]


class Outline:
    """A rendered file (:attr:`text`) cut where real-server blocks stand: the text
    before the first virtual server, and per virtual server its header (up to its
    first block), its blocks and what follows them up to the next virtual server.
    :attr:`skeleton` (everything but the blocks) is None for a text the renderer does
    not write (a virtual server without blocks, or other lines between them)."""

    __slots__ = ("text", "prelude", "heads", "servers", "tails", "skeleton")

    def __init__(self, text: str) -> None:
        self.text = text
        heads: List[str] = []
        servers: List[Tuple[str, ...]] = []
        tails: List[str] = []
        at = text.find(_VS)
        self.prelude = text if at < 0 else text[:at + 1]
        ok = True
        while at >= 0:
            begin = at + 1
            close = text.find(_VS_END, begin)
            first = text.find(_RS, begin, close)
            if close < 0 or first < 0:
                ok = False
                break
            at = text.find(_VS, close)
            pieces = text[first + 1:close + 1].split(_RS_END)
            if pieces[-1] != "" or not all(p.startswith(_RS[1:]) for p in pieces[:-1]):
                ok = False
                break
            heads.append(text[begin:first + 1])
            servers.append(tuple(p + _RS_END[:-1] for p in pieces[:-1]))
            tails.append(text[close + 1:] if at < 0 else text[close + 1:at + 1])
        self.heads, self.servers, self.tails = tuple(heads), tuple(servers), tuple(tails)
        self.skeleton: Optional[tuple] = (
            (self.prelude, self.heads, self.tails) if ok else None)

    def quorum(self, vs: int) -> int:
        """Virtual server *vs*'s ``quorum`` (keepalived's default 1 when unset)."""
        head = self.heads[vs]
        at = head.find(_QUORUM)
        return 1 if at < 0 else int(head[at + len(_QUORUM):head.index("\n", at + 1)])


class Accepted:
    """The real-server blocks keepalived accepted, per virtual-server header, under
    one opening part (another opening part starts afresh).  Bounded: :meth:`trim`
    keeps, per live virtual server, its live blocks plus at most as many others again
    (and :data:`SLACK`) -- members that came back or were checked ahead of time."""

    SLACK = 1024

    def __init__(self) -> None:
        self.prelude: Optional[str] = None
        self._blocks: Dict[str, Set[str]] = {}
        #: per header, the blocks added last (an unchanged virtual server is skipped)
        self._last: Dict[str, Tuple[str, ...]] = {}

    def known(self, prelude: str, head: str) -> Set[str]:
        """Blocks accepted under *prelude* in the virtual server headed *head*, each
        by its :func:`shape`."""
        if prelude != self.prelude:
            return set()
        return self._blocks.get(head, set())

    def add(self, outline: Outline) -> None:
        """Every block of *outline*, a text keepalived accepted."""
        if outline.skeleton is None:
            return
        if outline.prelude != self.prelude:
            self.prelude, self._blocks, self._last = outline.prelude, {}, {}
        for head, blocks in zip(outline.heads, outline.servers):
            last = self._last.get(head, ())     # kept in step with _blocks' headers
            if last == blocks:
                continue
            added = set(last)
            self._blocks.setdefault(head, set()).update(
                shape(b) for b in blocks if b not in added)
            self._last[head] = blocks

    def trim(self, live: Outline) -> None:
        """Forget the virtual servers *live* (the file in place) no longer has, and
        start a live one's memory over from its blocks when it has grown too big."""
        if live.skeleton is None or live.prelude != self.prelude:
            self.prelude, self._blocks, self._last = None, {}, {}
            return
        kept: Dict[str, Set[str]] = {}
        for head, blocks in zip(live.heads, live.servers):
            known = self._blocks.get(head, set())
            kept[head] = known if len(known) <= 2 * len(blocks) + self.SLACK \
                else set(map(shape, blocks))
        self._blocks = kept
        self._last = {head: last for head, last in self._last.items() if head in kept}

    def __len__(self) -> int:
        return sum(map(len, self._blocks.values()))


def to_check(validated: Optional[Outline], new: Outline,
             accepted: Optional[Accepted] = None) -> Optional[str]:
    """The text ``keepalived -t`` must accept for *new* to be known good, given that
    it accepted *validated* (and every block in *accepted*); None when nothing in
    *new* is new (see the module)."""
    if validated is None or new.skeleton is None or validated.skeleton is None \
            or new.skeleton != validated.skeleton:
        return new.text
    fresh: List[List[int]] = []
    for vs, (before, after) in enumerate(zip(validated.servers, new.servers)):
        if after == before:                 # untouched: accepted as it stands
            fresh.append([])
            continue
        if len({b[:b.index("{")] for b in after}) != len(after):
            return new.text                 # a real server twice
        same = set(before)
        differ = [i for i, b in enumerate(after) if b not in same]
        came: List[int] = []
        if differ:              # shapes only of the blocks not as before, and their own
            prior = {_head(b): b for b in before}
            more = accepted.known(new.prelude, new.heads[vs]) if accepted is not None else ()
            for i in differ:
                k, was = shape(after[i]), prior.get(_head(after[i]))
                if k not in more and (was is None or shape(was) != k):
                    came.append(i)
        try:
            quorum = new.quorum(vs)
            if came:
                came = sorted(set(came) | _weight_kept(after, quorum, set(came)))
            elif not _meets(after, quorum):
                return new.text             # keepalived's own word on the quorum
        except ValueError:                  # a weight or quorum that is not a number
            return new.text
        fresh.append(came)
    if not any(fresh):
        return None
    out = [new.prelude]
    for vs, chosen in enumerate(fresh):
        if chosen:
            blocks = new.servers[vs]
            out += [new.heads[vs], "\n".join(blocks[i] for i in chosen), "\n", new.tails[vs]]
    return "".join(out)


def _head(block: str) -> str:
    """A block's first line (``real_server IP PORT {``): the real server it is."""
    return block[:block.find("\n")]


def _weight(block: str) -> int:
    at = block.find(_WEIGHT)
    if at < 0:
        return 1                            # keepalived's default
    return int(block[at + len(_WEIGHT):block.index("\n", at + 1)])


def _meets(blocks: Iterable[str], quorum: int) -> bool:
    """Whether the weights of *blocks* add up to *quorum* (stops as soon as they do)."""
    total = 0
    for block in blocks:
        total += _weight(block)
        if total >= quorum:
            return True
    return total >= quorum


def _weight_kept(blocks: Tuple[str, ...], quorum: int, chosen: Set[int]) -> Set[int]:
    """Accepted blocks to check beside the *chosen* ones so that keepalived's check
    of the quorum against the sum of the weights comes out as for all *blocks*: added
    until the sum meets the quorum, or all of weight > 0 when even all fall short."""
    total = sum(_weight(blocks[i]) for i in chosen)
    extra: Set[int] = set()
    for i, block in enumerate(blocks):
        if total >= quorum:
            break
        weight = 0 if i in chosen else _weight(block)
        if weight > 0:
            extra.add(i)
            total += weight
    return extra
