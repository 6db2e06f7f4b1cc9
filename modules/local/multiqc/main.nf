process MULTIQC {
    label 'process_single'

    input:
    path multiqc_files, stageAs: '?/*'
    path multiqc_config

    output:
    path "multiqc_report.html", emit: report
    path "multiqc_data"       , emit: data
    path "versions.yml"       , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    // No COEM_FAILURE_FILE: the report covers all samples, its failure is the run's.
    """
    export COEM_WARNINGS_FILE=coem_warnings.txt
    export COEM_PIPELINE_VERSION=${workflow.manifest.version}
    export COEM_PACKAGE_DIGEST=${task.ext.coem_digest ?: 'unset'}
    # One overview row per sample from the steps' tables (section coem_overview, first in the report).
    coem_overview.py --input-dir . --output coem_overview_mqc.json
    # Fixed names whatever the report title: multiqc_report.html and multiqc_data/.
    multiqc --force --strict --config ${multiqc_config} --filename multiqc_report.html \\
        --cl-config 'data_dir_name: multiqc_data' ${args} .

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        multiqc: \$( multiqc --version | sed -e 's/.*version //' )
    END_VERSIONS
    """

    stub:
    """
    mkdir multiqc_data
    touch multiqc_report.html
    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        multiqc: stub
    END_VERSIONS
    """
}
