process AGGREGATE {
    tag "${meta.id}"
    label 'process_single'
    container "${params.container_cpu}"

    input:
    tuple val(meta), path(h5mu)

    output:
    tuple val(meta), path("${prefix}.aggregated.h5mu"), emit: h5mu
    path "versions.yml"                                , emit: versions

    script:
    def args = task.ext.args ?: ''
    prefix   = task.ext.prefix ?: "${meta.id}"
    """
    coem_aggregate.py \\
        --sample ${meta.id} \\
        --input ${h5mu} \\
        --prefix ${prefix} \\
        --process-name ${task.process} \\
        ${args}
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    touch ${prefix}.aggregated.h5mu versions.yml
    """
}
