process EVALUATE {
    tag "${meta.id}"
    label 'process_low'
    container "${params.container_cpu}"

    input:
    tuple val(meta), path(h5mu)

    output:
    tuple val(meta), path("${prefix}.evaluation.tsv"), emit: table
    path "${prefix}.evaluation_summary.json"          , emit: summary
    path "${prefix}.diffusion.npz"                    , emit: diffusion
    path "*_mqc.json"                                 , emit: mqc
    path "versions.yml"                               , emit: versions

    script:
    def args = task.ext.args ?: ''
    prefix   = task.ext.prefix ?: "${meta.id}"
    """
    export OMP_NUM_THREADS=${task.cpus}
    coem_evaluate.py \\
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
    touch ${prefix}.evaluation.tsv ${prefix}.evaluation_summary.json ${prefix}.diffusion.npz ${prefix}_evaluation_mqc.json versions.yml
    """
}
