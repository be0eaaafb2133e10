"""Local PKI in the cert-manager Secret layout (see issue: transport security)."""
