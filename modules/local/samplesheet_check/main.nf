process SAMPLESHEET_CHECK {
    tag "${samplesheet.name}"
    label 'process_single'

    input:
    path samplesheet
    val  base_dir      // relative paths in the samplesheet are resolved against its own folder

    output:
    path 'samplesheet.valid.csv', emit: csv
    path 'versions.yml'         , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    // Inside a container the user's files are not mounted: existence is then checked by
    // the workflow (subworkflows/local/input_check) when it stages them.
    def check_files = workflow.containerEngine ? '--no-check-files' : ''
    // No COEM_FAILURE_FILE here: a samplesheet error fails the whole run at once.
    """
    export COEM_PIPELINE_VERSION=${workflow.manifest.version}
    export COEM_PACKAGE_DIGEST=${task.ext.coem_digest ?: 'unset'}
    coem_samplesheet_check.py \\
        --input ${CoemShell.quote(samplesheet)} \\
        --base-dir ${CoemShell.quote(base_dir)} \\
        --output samplesheet.valid.csv \\
        ${check_files} \\
        --process-name ${task.process}
    """

    stub:
    // The check is cheap and later steps need its normalised paths: run it in stub mode too.
    """
    export COEM_PIPELINE_VERSION=${workflow.manifest.version}
    coem_samplesheet_check.py \\
        --input ${CoemShell.quote(samplesheet)} \\
        --base-dir ${CoemShell.quote(base_dir)} \\
        --output samplesheet.valid.csv \\
        --no-check-files \\
        --process-name ${task.process}
    """
}
