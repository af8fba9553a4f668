"""Power of the pre-registered test (PLAN.md): one-sided exact permutation Spearman test, 7 sets.

    python experiments/confirm-cpu/power.py

Prints the smallest population correlation detected with 80 % power and the power at other ρ,
by simulation from a bivariate normal (si_toolkit.estimators.spearman_power).
"""

from si_toolkit.estimators import detectable_spearman, spearman_power

N_SETS, ALPHA = 7, 0.05

if __name__ == "__main__":
    print(f"{N_SETS} sets, alpha = {ALPHA} (one-sided): 80 % power at rho >= {detectable_spearman(N_SETS, alpha=ALPHA)}")
    for rho in (0.0, 0.3, 0.5, 0.7, 0.8, 0.9):
        print(f"  rho = {rho:.1f}: power {spearman_power(N_SETS, rho, alpha=ALPHA):.2f}")
