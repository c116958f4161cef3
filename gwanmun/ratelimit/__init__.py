"""Rate limiting without HTTP: the algorithms (``algorithms``: fixed window, sliding window, GCRA), the periods and
their windows (``periods``), and two stores: ``shared`` (counters shared by the worker processes of a node: the
``local`` policy, and ``limit-conn``'s in-flight counts) and ``redis_store`` (counters shared by nodes). The plugins
are ``gwanmun.plugins.rate_limiting`` and ``gwanmun.plugins.limit_conn``; the design is in docs/rate-limiting.md.

``stats`` counts, per process, what went wrong: evicted counters, stuck locks, store failures and what was done
about them (``fail_open``: let through, ``fail_closed``: answered 500).
"""

stats: dict[str, int] = {
    "evictions": 0,  # a live counter was dropped because its probe range was full
    "lock_timeouts": 0,  # a shared-memory lock could not be taken in time: the request went on unlimited
    "lock_recovered": 0,  # a lock held by a dead worker was released
    "conn_table_full": 0,  # limit-conn had no slot for a key: the request went on uncounted
    "local_failures": 0,  # rate-limiting requests let through because the local table was stuck
    "redis_errors": 0,  # redis calls that failed (or were skipped during the pause after a failure)
    "fail_open": 0,
    "fail_closed": 0,
}
