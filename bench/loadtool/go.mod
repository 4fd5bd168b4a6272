module retrybudget.invalid/bench/loadtool

go 1.22
