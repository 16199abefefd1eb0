"""The HDF5 trace: schema, writer, reader, and merging a sweep's parts."""
