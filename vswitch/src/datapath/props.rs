//! Property tests: the datapath's frame handlers (GRO, GSO, admission,
//! l2bridge) under arbitrary bytes never panic.
