// SecureChannel module: see Package.swift for its layer.
