import Testing

@Suite struct AuditPlaceholderSuite {}
