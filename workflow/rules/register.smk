# Leveling and registration, parallel across cycles: level, estimate within each cycle and link it
# to the cycle before (one independent job per cycle), compose the cumulative drift in one cheap
# gather, apply per cycle.


rule register_cycle:
    # Leveling and the link into the cycle are steps of this job, not jobs of their own: a level
    # or link job spent ~1.5 of its 2-3 s starting Python and importing xarray, dask, zarr and
    # scipy (bench-m). The link reads four frames of three cycles from the ingested cube and
    # levels them itself, so the jobs of different cycles stay independent. Each step writes its
    # own store with its own record (steps level_cycle, register_cycle, link_into_cycle), so the
    # audit re-runs them one at a time, and a job that fails in any step leaves no output.
    input:
        cube="results/cubes/{dataset}.zarr",
    output:
        leveled=directory("results/level/{dataset}/cycle_{cycle}.zarr"),
        within=directory("results/register/{dataset}/within/cycle_{cycle}.zarr"),
        link=directory("results/register/{dataset}/links/into_cycle_{cycle}.zarr"),
    log:
        "logs/register_cycle/{dataset}/cycle_{cycle}.log",
    benchmark:
        "benchmarks/register_cycle/{dataset}/cycle_{cycle}.tsv"
    conda:
        "../../envs/ecafm.yaml"
    # One job per cycle is the parallel axis: 1 thread each lets --cores N run N cycles at
    # once (bench-s, 2 cores: 92.6 s against 129.1 s with 2 threads per job). Raise with
    # --set-threads on nodes with many cores per job.
    threads: 1
    resources:
        # the input is the whole data set's cube, of which the job reads one cycle
        mem_mb=get_mem_mb(base_mb=1000, per_input_mb=5, per_cycle=True),
        runtime=get_runtime(base_min=10, per_input_gb_min=70, per_cycle=True),
        dask_scheduler=get_dask_scheduler,
    params:
        level=get_level_params,
        register=get_register_params,
    script:
        "../../scripts/register_cycle.py"


rule compose_drift:
    input:
        unpack(get_compose_inputs),
    output:
        transforms=directory("results/register/{dataset}/transforms.zarr"),
        table="results/register/{dataset}/transforms.tsv",
    log:
        "logs/compose_drift/{dataset}.log",
    conda:
        "../../envs/ecafm.yaml"
    threads: 1
    resources:
        mem_mb=get_mem_mb(base_mb=1000, per_input_mb=1),
        runtime=get_runtime(base_min=10, per_input_gb_min=10),
    params:
        loop_weight=get_loop_weight,
        loop_fusion=get_loop_fusion,
    script:
        "../../scripts/compose_drift.py"


rule apply_registration:
    input:
        leveled="results/level/{dataset}/cycle_{cycle}.zarr",
        transforms="results/register/{dataset}/transforms.zarr",
        # the first cycle's h_ref: every frame is aligned to it here, once (segment reads them)
        first=get_first_leveled,
    output:
        directory("results/register/{dataset}/cycle_{cycle}.zarr"),
    log:
        "logs/apply_registration/{dataset}/cycle_{cycle}.log",
    benchmark:
        "benchmarks/apply_registration/{dataset}/cycle_{cycle}.tsv"
    conda:
        "../../envs/ecafm.yaml"
    # One job per cycle is the parallel axis: 1 thread each lets --cores N run N cycles at
    # once (bench-s, 2 cores: 92.6 s against 129.1 s with 2 threads per job). Raise with
    # --set-threads on nodes with many cores per job.
    threads: 1
    resources:
        mem_mb=get_mem_mb(base_mb=1000, per_input_mb=3),
        runtime=get_runtime(base_min=10, per_input_gb_min=30),
        dask_scheduler=get_dask_scheduler,
    params:
        resample_order=get_resample_order,
        tip_radius_nm=get_tip_radius,
    script:
        "../../scripts/apply_registration.py"


rule gather_registered:
    input:
        get_registered,
    output:
        touch("results/register/{dataset}/registered.done"),
    log:
        "logs/gather_registered/{dataset}.log",
    localrule: True
    threads: 1
    resources:
        mem_mb=100,
        runtime=1,
