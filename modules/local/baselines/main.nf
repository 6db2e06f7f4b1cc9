process BASELINES {
    tag "${meta.id}"
    label 'process_medium'
    container "${params.container_baselines}"

    input:
    tuple val(meta), path(h5mu)

    output:
    tuple val(meta), path("${prefix}.method_comparison.tsv"), emit: comparison
    tuple val(meta), path("${prefix}.runtime.tsv")          , emit: runtime
    path "${prefix}.baseline_assignments.tsv"               , emit: assignments
    path "${prefix}.method_comparison.json"                 , emit: json
    path "*_mqc.json"                                       , emit: mqc
    path "versions.yml"                                     , emit: versions

    script:
    def args = task.ext.args ?: ''
    prefix   = task.ext.prefix ?: "${meta.id}"
    """
    export OMP_NUM_THREADS=${task.cpus}
    export NUMBA_NUM_THREADS=${task.cpus}
    coem_baselines.py \\
        --sample ${meta.id} \\
        --input ${h5mu} \\
        --prefix ${prefix} \\
        --seed ${params.seed} \\
        --process-name ${task.process} \\
        ${args}
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    touch ${prefix}.method_comparison.tsv ${prefix}.runtime.tsv ${prefix}.baseline_assignments.tsv ${prefix}.method_comparison.json
    touch ${prefix}_method_comparison_mqc.json ${prefix}_runtime_comparison_mqc.json versions.yml
    """
}
