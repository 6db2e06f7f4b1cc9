process EMBED {
    tag "${meta.id}"
    label 'process_low'
    container "${params.container_cpu}"

    input:
    tuple val(meta), path(h5mu)

    output:
    tuple val(meta), path("${prefix}.embed.h5mu"), emit: h5mu
    path "versions.yml"                          , emit: versions

    script:
    def args = task.ext.args ?: ''
    prefix   = task.ext.prefix ?: "${meta.id}"
    """
    export OMP_NUM_THREADS=${task.cpus}
    coem_embed.py \\
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
    touch ${prefix}.embed.h5mu versions.yml
    """
}
