"""recmgd, the daemon: drives the caching/prefetching policies from the pools' live access rings.

Modules: ``config`` (strict TOML), ``loop`` (one pool: rings -> steps -> policy -> pool), ``apps``
(app processes that come and go), ``control`` (the Unix control socket), ``notify`` (sd_notify and
logging), ``metrics`` (Prometheus), ``record`` (the drain path's tap: recordings of the live stream),
``retrain`` (the rolling window and the trainer process of online retraining), ``service`` (the process
that ties them together). The daemon never imports the simulator.
"""
