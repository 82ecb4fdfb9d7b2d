"""NF framework: packet batches, header parsers and builders, operators, graphs, ports."""
