import Testing

@Suite struct RuntimePlaceholderSuite {}
