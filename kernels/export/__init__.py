"""Exporters: an allocation written in the checkpoint formats serving engines load.
`kernels.export.registry.write_export` is the one entry point, one module per
format; `kernels.export.formats` declares what each format holds. This package
file stays free of torch: the service reads `formats`."""
