# collective/ring: the host ring all-reduce over TCP, with its ranks as forked processes on
# loopback (sums for worlds 1-5, killed/crashed/stopped peers, tags, timeouts), and strangers
# without the ring key, as dialer and as acceptor, replays, silent and slow connections.
drover_unit_test(test_ring SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_ring.c
                 LIBS drover_collective drover_common PkgConfig::SODIUM m LABELS unit TIMEOUT 120)
