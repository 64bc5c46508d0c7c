# One job per (experiment, method, seed): train, prune to every target, evaluate.


rule train:
    input:
        plugin_files,
    output:
        metrics="results/runs/{experiment}/{method}/seed={seed}/metrics.jsonl",
        artefacts="results/runs/{experiment}/{method}/seed={seed}/artefacts.pt",
    params:
        spec=spec_of,
    threads: 1
    resources:
        gpu=gpu_count,
        mem_mb=train_mem_mb,
        runtime=120,
    log:
        "results/logs/train/{experiment}/{method}/seed={seed}.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/train.py"
