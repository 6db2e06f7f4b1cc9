/*
 * The COEM DAG, per sample in parallel:
 *   QC -> EMBED (pca_lsi) or TRAIN_VAE (vae) -> METACELLS -> AGGREGATE -> PEAK2GENE
 *                                                        \-> EVALUATE
 *                                                        \-> BASELINES (--run_baselines: SEACells)
 * then one MULTIQC report over all samples.
 */

include { INPUT_CHECK  } from '../subworkflows/local/input_check'
include { QC           } from '../modules/local/qc'
include { EMBED        } from '../modules/local/embed'
include { TRAIN_VAE    } from '../modules/local/train_vae'
include { METACELLS    } from '../modules/local/metacells'
include { AGGREGATE    } from '../modules/local/aggregate'
include { PEAK2GENE    } from '../modules/local/peak2gene'
include { EVALUATE     } from '../modules/local/evaluate'
include { MULTIQC      } from '../modules/local/multiqc'
include { BASELINES_COMPARISON } from '../subworkflows/local/baselines'
include { softwareVersionsToYAML; paramsSummaryMultiqc } from '../subworkflows/local/utils_coem_pipeline'

workflow COEM {
    take:
    samplesheet // file

    main:
    ch_versions = Channel.empty()
    ch_mqc      = Channel.empty()

    INPUT_CHECK(samplesheet)
    ch_versions = ch_versions.mix(INPUT_CHECK.out.versions)

    QC(INPUT_CHECK.out.samples)
    ch_versions = ch_versions.mix(QC.out.versions)
    ch_mqc      = ch_mqc.mix(QC.out.mqc)

    if (params.embedding == 'vae') {
        TRAIN_VAE(QC.out.h5mu)
        ch_embedded = TRAIN_VAE.out.h5mu
        ch_versions = ch_versions.mix(TRAIN_VAE.out.versions)
        ch_mqc      = ch_mqc.mix(TRAIN_VAE.out.mqc)
    } else {
        EMBED(QC.out.h5mu)
        ch_embedded = EMBED.out.h5mu
        ch_versions = ch_versions.mix(EMBED.out.versions)
    }

    METACELLS(ch_embedded)
    ch_versions = ch_versions.mix(METACELLS.out.versions)
    ch_mqc      = ch_mqc.mix(METACELLS.out.mqc)

    AGGREGATE(METACELLS.out.h5mu)
    ch_versions = ch_versions.mix(AGGREGATE.out.versions)

    ch_p2g_input = params.p2g_single_cell
        ? AGGREGATE.out.h5mu.join(METACELLS.out.h5mu)
        : AGGREGATE.out.h5mu.map { meta, agg -> [meta, agg, []] }
    // join by sample id: meta gains fields along the way (e.g. QC), the id stays
    ch_known_links = INPUT_CHECK.out.known_links.map { meta, links -> [meta.id, links] }
    ch_p2g_input = ch_p2g_input
        .map { row -> [row[0].id] + row }
        .join(ch_known_links)
        .map { row -> row[1..-1] }
    ch_fasta = params.fasta ? Channel.value(file(params.fasta, checkIfExists: true)) : Channel.value([])
    PEAK2GENE(ch_p2g_input, ch_fasta)
    ch_versions = ch_versions.mix(PEAK2GENE.out.versions)
    ch_mqc      = ch_mqc.mix(PEAK2GENE.out.mqc)

    if (!params.skip_evaluation) {
        EVALUATE(METACELLS.out.h5mu)
        ch_versions = ch_versions.mix(EVALUATE.out.versions)
        ch_mqc      = ch_mqc.mix(EVALUATE.out.mqc)
    }

    // SEACells baselines on the same cells, scored the same way (Table-2-style comparison).
    if (params.run_baselines) {
        BASELINES_COMPARISON(METACELLS.out.h5mu)
        ch_versions = ch_versions.mix(BASELINES_COMPARISON.out.versions)
        ch_mqc      = ch_mqc.mix(BASELINES_COMPARISON.out.mqc)
    }

    // Report: every step's custom content, software versions and the parameter summary.
    ch_versions_yaml = softwareVersionsToYAML(ch_versions)
        .collectFile(storeDir: "${params.outdir}/pipeline_info", name: 'coem_software_mqc_versions.yml', sort: true, newLine: true)
    ch_params_yaml = Channel.value(paramsSummaryMultiqc())
        .collectFile(name: 'coem_params_summary_mqc.yaml')
    MULTIQC(
        ch_mqc.mix(ch_versions_yaml, ch_params_yaml).collect(),
        file(params.multiqc_config, checkIfExists: true),
    )

    emit:
    multiqc_report = MULTIQC.out.report
    versions       = ch_versions
}
