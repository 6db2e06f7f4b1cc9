process METACELLS {
    tag "${meta.id}"
    label 'process_low'
    container "${params.container_cpu}"

    input:
    tuple val(meta), path(h5mu)

    output:
    tuple val(meta), path("${prefix}.metacells.h5mu"), emit: h5mu
    path "${prefix}.metacell_sizes.tsv"               , emit: sizes
    path "*_mqc.json"                                 , emit: mqc
    path "versions.yml"                               , emit: versions

    script:
    def args = task.ext.args ?: ''
    prefix   = task.ext.prefix ?: "${meta.id}"
    """
    export OMP_NUM_THREADS=${task.cpus}
    coem_metacells.py \\
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
    touch ${prefix}.metacells.h5mu ${prefix}.metacell_sizes.tsv ${prefix}_metacells_summary_mqc.json versions.yml
    """
}
