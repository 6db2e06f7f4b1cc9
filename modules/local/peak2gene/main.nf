process PEAK2GENE {
    tag "${meta.id}"
    label 'process_low'
    container "${params.container_cpu}"

    input:
    tuple val(meta), path(aggregated), path(cells), path(known_links)  // cells / known_links: a file or []
    path fasta                                                         // genome FASTA for GC matching, or []

    output:
    tuple val(meta), path("${prefix}.peak2gene.tsv")                    , emit: links
    tuple val(meta), path("${prefix}.peak2gene_significant.tsv")        , emit: significant
    tuple val(meta), path("${prefix}.peak2gene_significant.bedpe")      , emit: bedpe
    path "${prefix}.peak2gene_summary.json"                             , emit: summary
    path "*_mqc.json"                                                   , emit: mqc
    path "versions.yml"                                                 , emit: versions

    script:
    def args  = task.ext.args ?: ''
    prefix    = task.ext.prefix ?: "${meta.id}"
    def sc    = cells ? "--cells ${cells}" : ''
    def known = known_links ? "--known-links ${known_links}" : ''
    def gc    = fasta ? "--fasta ${fasta}" : ''
    """
    export OMP_NUM_THREADS=${task.cpus}
    coem_peak2gene.py \\
        --sample ${meta.id} \\
        --input ${aggregated} \\
        ${sc} \\
        ${known} \\
        ${gc} \\
        --prefix ${prefix} \\
        --seed ${params.seed} \\
        --process-name ${task.process} \\
        ${args}
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    touch ${prefix}.peak2gene.tsv ${prefix}.peak2gene_significant.tsv ${prefix}.peak2gene_significant.bedpe
    touch ${prefix}.peak2gene_summary.json ${prefix}_peak2gene_summary_mqc.json versions.yml
    """
}
