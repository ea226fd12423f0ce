"""The benchmark record's arithmetic (bench/record.py); its shape as a real benchmark writes it: tests/test_bench.py."""

from reproresnet.bench import record as bench_record


def test_ratios_pair_rows_by_network():
    rows = [{"arch": "a", "path": "reproresnet", "images_per_second": 300.0, "data_images_per_second": 9000.0},
            {"arch": "b", "path": "reproresnet", "images_per_second": 50.0, "data_images_per_second": 10.0},
            {"arch": "a", "path": "stacked-3", "images_per_second": 600.0, "data_images_per_second": 3000.0},
            {"arch": "a", "path": "baseline", "images_per_second": 100.0, "data_images_per_second": 1000.0}]
    assert bench_record.ratios(rows) == [{"arch": "a", "path": "reproresnet", "step_speedup": 3.0, "data_speedup": 9.0},
                                  {"arch": "a", "path": "stacked-3", "step_speedup": 6.0, "data_speedup": 3.0}]


def test_thread_ratios_are_against_the_free_core_rule():
    rows = [bench_record.thread_row("a", rule=rule, batch_size=32, threads=[t, t], load_averages=[3.5, 3.6],
                                    round_seconds=[s, s * 3]) for rule, t, s in
            (("free cores", 1, 0.2), ("torch default = all cores", 2, 0.4))]
    assert rows[0]["seconds_per_step"] == 0.4 and rows[0]["images_per_second"] == 80.0  # the median of 2 rounds
    assert bench_record.thread_ratios(rows) == [{"arch": "a", "rule": "torch default = all cores", "speedup": 0.5}]
