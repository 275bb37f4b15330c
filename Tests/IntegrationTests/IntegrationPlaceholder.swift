import Testing

@Suite struct IntegrationPlaceholderSuite {}
