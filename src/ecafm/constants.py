"""Metal constants: volume <-> charge conversion for plated metal anodes.

charge per nm^3 = z * e * rho * N_A / M  (rho in g/nm^3, M in g/mol).
Li: 12.996 cm^3/mol, 46.34 atoms/nm^3, 7.42e-18 C/nm^3.
"""

from __future__ import annotations

from dataclasses import dataclass

_CM3_PER_NM3 = 1e-21
#: Avogadro constant (1/mol) and elementary charge (C): exact since the 2019 SI redefinition, the
#: values scipy.constants gives (tested). Written out because importing scipy.constants parses
#: its whole CODATA table, 0.08-0.1 s in every segment job.
AVOGADRO = 6.02214076e23
ELEMENTARY_CHARGE_C = 1.602176634e-19


@dataclass(frozen=True)
class Metal:
    """A plated metal: symbol, molar mass (g/mol), density (g/cm^3), charge number z."""

    symbol: str
    molar_mass_g_mol: float
    density_g_cm3: float
    z: int

    @property
    def molar_volume_cm3_mol(self) -> float:
        """Molar volume M / rho in cm^3/mol."""
        return self.molar_mass_g_mol / self.density_g_cm3

    @property
    def atoms_per_nm3(self) -> float:
        """Number density rho * N_A / M in atoms per nm^3."""
        return self.density_g_cm3 * _CM3_PER_NM3 * AVOGADRO / self.molar_mass_g_mol

    @property
    def charge_per_nm3_C(self) -> float:
        """Charge passed per nm^3 of dense metal, z * e * rho * N_A / M, in C/nm^3."""
        return self.z * ELEMENTARY_CHARGE_C * self.atoms_per_nm3

    def volume_to_charge(self, volume_nm3: float) -> float:
        """Charge in C for a volume in nm^3."""
        return volume_nm3 * self.charge_per_nm3_C

    def charge_to_volume(self, charge_C: float) -> float:
        """Volume in nm^3 for a charge in C."""
        return charge_C / self.charge_per_nm3_C


METALS: dict[str, Metal] = {
    "Li": Metal("Li", 6.94, 0.534, 1),
    "Na": Metal("Na", 22.99, 0.968, 1),
    "Zn": Metal("Zn", 65.38, 7.14, 2),
}


def get_metal(symbol: str) -> Metal:
    """Look up a metal by symbol (case-sensitive element symbol, e.g. "Li")."""
    try:
        return METALS[symbol]
    except KeyError:
        known = ", ".join(sorted(METALS))
        raise ValueError(f"unknown metal {symbol!r}; known metals: {known}") from None
