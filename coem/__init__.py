"""COEM-nf: multiome metacells (COEM method) as a Nextflow pipeline; this is its Python core."""

__version__ = "0.1.0"
