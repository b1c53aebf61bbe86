"""Autotuning of the generated kernels' launch parameters.

    buckets   the one shape-bucketing function (tuner and dispatcher)
    space     search spaces from each variant's <stem>.space.toml and the keep() constraints
    problem   TuningProblem (spec + tokens, FLOPs per kernel) and DeviceFacts
    workload  tuning inputs on a device, float64 reference outputs, candidate checks
    outcome   Candidate and Failure (the stages a candidate can fail at)
    compile   parallel compilation of candidates in spawned worker processes
    timer     the Timer interface: GpuTimer, InterpreterTimer, ReplayTimer, RecordingTimer
    study     the persistent Optuna study of one kernel and problem (ask with repair)
    search    the tuning loop: ask a batch, compile in parallel, check and time one by
              one, re-time the best side by side, store trials and the winner
    workers   several worker processes (one per GPU) sharing one study: `tune --workers`
    db        the SQLite tuning database (trials, winners, schema version, layers)
    lookup    the in-memory index of winners the dispatcher searches
    exchange  JSON export and import of winners with provenance
    on_miss   MHFGEN_TUNE_ON_MISS: a search of one missed key in the caller's process,
              registered with mhfgen.record as its tune-on-miss hook

buckets, db and lookup are the store's read side, which the runtime (dispatch, record)
imports; the other modules are the tuner, which the runtime never imports (the contracts
of pyproject.toml, docs/ARCHITECTURE.md). Modules are imported on demand: `import mhfgen`
before torch loads none of them, and a call of the op only the read side.
"""
