import Testing

@Suite struct SecureChannelPlaceholderSuite {}
