"""The LVS extension: topology in, keepalived configuration out.

Data flows one way through plain, immutable values::

    feed (file / MQTT / HTTP)  ->  topology.Topology          (topology.py)
    Topology + Settings        ->  model.LvsConfig + warnings (plan.py)
    LvsConfig (+ drain, guard) ->  LvsConfig                  (drain.py, guard.py)
    LvsConfig + Settings       ->  keepalived.conf text       (render.py)
    text                       ->  validated, atomically written, reloaded (keepalived.py)

Only the last step and the feeds have side effects.
"""
