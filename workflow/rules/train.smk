# One job per (experiment, method, stack): the stack's seeds train as one stacked model, then
# each is pruned to every target and evaluated.  The job writes one folder per seed,
# results/runs/{experiment}/{method}/seed={seed}/ (metrics.jsonl, artefacts.pt), and last the
# stack file naming them: downstream rules depend on the stack files.


rule train:
    input:
        plugin_files,
    output:
        stack="results/runs/{experiment}/{method}/stack-{stack}.json",
    params:
        specs=stack_specs,
    threads: 1
    resources:
        gpu=gpu_count,
        mem_mb=train_mem_mb,
        runtime=120,
    log:
        "results/logs/train/{experiment}/{method}/stack-{stack}.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/train.py"


# `snakemake stacks`: train every stack of the grid and nothing downstream (no aggregation,
# latency or figures).  What a grid accumulated over several machines runs: the stacks restored
# from an archive (`slabbench archive unpack`) keep no per-weight artefacts (slabbench.archive).
localrules:
    stacks,


rule stacks:
    input:
        STACK_FILES,
