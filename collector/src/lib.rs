//! flopmeter-collector: ingest, ledger, compliance driver and HTTP (filled by later issues).
