"""Running edged as a service: systemd notifications, signals, graceful drain."""
