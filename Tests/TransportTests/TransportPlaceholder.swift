import Testing

@Suite struct TransportPlaceholderSuite {}
