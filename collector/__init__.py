"""The org's side of the wire: the reference collector (`server`, over `storage`), the chain and
gap report (`verify`) and the export (`export`). Reads bundles through `schemas` only and never
imports the daemon; the collector itself never needs the org private key (only export does)."""
