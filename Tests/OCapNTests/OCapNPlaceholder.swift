import Testing

@Suite struct OCapNPlaceholderSuite {}
