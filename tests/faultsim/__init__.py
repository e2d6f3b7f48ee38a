"""The seeded fault simulator: random schedules of venue faults, operator commands, kills,
restarts, disk and ledger accidents and hostile requests, run against the real daemon (a
process) and the shipped emulators, with invariants checked from the venue's own order log
and the daemon's journal. See README.md, "Fault simulator", and ``python -m tests.faultsim``.

Modules: ``schedule`` (what happens), ``runner`` (running one schedule), ``invariants``
(what must hold), ``venue`` (the emulator, observed), ``world`` (directories, settings,
tmpfs, ledger accidents), ``api`` (the daemon's HTTP API), ``zygote`` (the fork server),
``pool`` (many at once), ``seeds`` (the named regression schedules), ``patterns`` (the log
lines relied on), ``ledger`` (reading the journal).
"""
