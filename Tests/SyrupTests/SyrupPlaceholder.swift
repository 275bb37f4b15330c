import Testing

@Suite struct SyrupPlaceholderSuite {}
