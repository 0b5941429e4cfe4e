package profiles

// GenSite is genSite for the benchmarks of the packages above profiles
// (diff_bench_test.go, package profiles_test).
var GenSite = genSite

// CPUTime is cpuTime, likewise.
var CPUTime = cpuTime
