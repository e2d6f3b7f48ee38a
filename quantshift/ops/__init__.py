"""Operations: logging, systemd, (later) HTTP, metrics and alerts."""
