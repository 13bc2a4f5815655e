# LossyMPI transport bindings (included into _ext.pyx). Owned by the transport work.
