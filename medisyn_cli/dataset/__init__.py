"""What several stages share about a dataset: the synthetic-content marks, the output formats (a registry, one
module per format: dicom, webdataset) and provenance checks. Imports only medisyn_cli.core and itself."""
