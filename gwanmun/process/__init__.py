"""The production process model: one supervisor, N worker processes, signals, reloads.

::

    gwanmun run --config kong.yml --workers N
        supervisor (the process you start; pid in gateway.pid_file)
          - loads, validates and compiles the config; binds the listeners, one SO_REUSEPORT socket per worker
            and listener, and keeps them open for the whole run
          - forks the workers; restarts one that dies (exponential backoff), logging why it died
          - SIGHUP, ``gwanmun reload`` or a change of the config file: load + validate + compile, then send the
            config to every worker; a bad config is logged and the old one keeps serving
          - SIGTERM / SIGINT: graceful stop (a second one forces it)
        worker 0..N-1 (gwanmun.process.worker)
          - serves its sockets on uvloop (``gwanmun.server.Worker``); swaps in each config it is sent

Modules: ``supervisor`` (the parent; ``run`` is the entry point), ``worker`` (a worker process's main), ``channel``
(the socketpair between them), ``reload`` (loading a candidate config, what a reload cannot change, watching the
file), ``signals`` (the supervisor's signal pipe), ``pidfile``. Nothing is imported here, so ``signals`` and
``pidfile`` load without the config layer.
"""
