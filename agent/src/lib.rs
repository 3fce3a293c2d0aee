//! flopmeter-agent: sampler, GPU sources, attributor, spool and shipper (filled by later issues).
