//! Cron expressions as a Kubernetes CronJob reads them (five fields: minute, hour,
//! day of month, month, day of week; names, ranges, steps, lists, `@daily` and the
//! other macros), optionally with a leading sixth field of seconds as Quartz and
//! robfig/cron's `WithSeconds` have it, and their fire times in an IANA time zone. A day matches when both
//! its day-of-month and day-of-week fields do, or either one when neither field is
//! `*` (Vixie cron's rule, which Kubernetes' cron library keeps). A local time that a
//! daylight-saving change skips fires at the first instant after the gap; one that
//! happens twice fires at the first. Pure.

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cron expression {expression:?}: {problem}")]
pub struct CronError {
    pub expression: String,
    pub problem: String,
}

/// A parsed expression: the allowed values of each field as bit sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    seconds: u64,
    minutes: u64,
    hours: u32,
    days_of_month: u32,
    months: u16,
    days_of_week: u8,
    /// Whether the day-of-month / day-of-week field was `*` (or `?`).
    any_day_of_month: bool,
    any_day_of_week: bool,
}

/// How far ahead or back a fire time is looked for: 8 years covers `0 0 29 2 *`.
const SEARCH_DAYS: i64 = 8 * 366;

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

impl std::str::FromStr for Cron {
    type Err = CronError;

    fn from_str(expression: &str) -> Result<Self, CronError> {
        let error = |problem: String| CronError {
            expression: expression.to_owned(),
            problem,
        };
        let expanded = match expression.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => return Err(error(format!("unknown macro {other}"))),
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let (second, [minute, hour, dom, month, dow]) = match fields[..] {
            [minute, hour, dom, month, dow] => ("0", [minute, hour, dom, month, dow]),
            [second, minute, hour, dom, month, dow] => (second, [minute, hour, dom, month, dow]),
            _ => {
                return Err(error(format!(
                    "expected 5 fields (minute hour day-of-month month day-of-week), or 6 with seconds first, found {}",
                    fields.len()
                )));
            }
        };
        let field = |text: &str, name: &str, min: u32, max: u32, names: &[&str]| {
            parse_field(text, min, max, names).map_err(|p| error(format!("{name} field {text:?}: {p}")))
        };
        // Day of week 7 is Sunday too.
        let mut days_of_week = field(dow, "day-of-week", 0, 7, &WEEKDAYS)?;
        if days_of_week & (1 << 7) != 0 {
            days_of_week |= 1;
        }
        Ok(Self {
            seconds: field(second, "second", 0, 59, &[])?,
            minutes: field(minute, "minute", 0, 59, &[])?,
            hours: field(hour, "hour", 0, 23, &[])? as u32,
            days_of_month: field(dom, "day-of-month", 1, 31, &[])? as u32,
            months: field(month, "month", 1, 12, &MONTHS)? as u16,
            days_of_week: (days_of_week & 0x7f) as u8,
            any_day_of_month: dom.starts_with('*') || dom == "?",
            any_day_of_week: dow.starts_with('*') || dow == "?",
        })
    }
}

/// One field's values as bits: a comma list of `*`, `N`, `N-M`, each with an
/// optional `/STEP` (`N/STEP` runs from N to the field's maximum).
fn parse_field(text: &str, min: u32, max: u32, names: &[&str]) -> Result<u64, String> {
    let value = |s: &str| -> Result<u32, String> {
        let upper = s.to_ascii_uppercase();
        if let Some(i) = names.iter().position(|n| *n == upper) {
            // Month names count from 1, weekday names from 0.
            return Ok(if names.len() == MONTHS.len() {
                i as u32 + 1
            } else {
                i as u32
            });
        }
        let n: u32 = s.parse().map_err(|_| format!("{s:?} is not a number or a name"))?;
        if n < min || n > max {
            return Err(format!("{n} is outside {min}-{max}"));
        }
        Ok(n)
    };
    let mut bits = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step.parse().map_err(|_| format!("step {step:?} is not a number"))?;
                if step == 0 {
                    return Err("a step of 0".into());
                }
                (range, step)
            }
            None => (item, 1),
        };
        let (low, high) = match range {
            "*" | "?" => (min, max),
            _ => match range.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                None if step > 1 || item.contains('/') => (value(range)?, max),
                None => {
                    let v = value(range)?;
                    (v, v)
                }
            },
        };
        if low > high {
            return Err(format!("the range {low}-{high} is empty"));
        }
        for v in (low..=high).step_by(step as usize) {
            bits |= 1u64 << v;
        }
    }
    Ok(bits)
}

impl Cron {
    fn day_matches(&self, date: Date) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let dom = self.days_of_month & (1 << date.day()) != 0;
        let dow = self.days_of_week & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        if self.any_day_of_month || self.any_day_of_week {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The fire times of `date`, in order, as instants in `tz`.
    fn fires_on(&self, date: Date, tz: &TimeZone) -> Vec<Timestamp> {
        if !self.day_matches(date) {
            return Vec::new();
        }
        let mut fires = Vec::new();
        for hour in (0..24).filter(|h| self.hours & (1u32 << h) != 0) {
            for minute in (0..60).filter(|m| self.minutes & (1u64 << m) != 0) {
                for second in (0..60).filter(|s| self.seconds & (1u64 << s) != 0) {
                    let local =
                        DateTime::from_parts(date, jiff::civil::time(hour as i8, minute as i8, second as i8, 0));
                    if let Ok(zoned) = local.to_zoned(tz.clone()) {
                        fires.push(zoned.timestamp());
                    }
                }
            }
        }
        // A gap can move a skipped time past a later one; keep instants in order.
        fires.sort();
        fires.dedup();
        fires
    }

    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        // From the day before in local time: a gap may move that day's last fire past midnight.
        let start = after.to_zoned(tz.clone()).date().checked_sub(1.day()).ok()?;
        (0..SEARCH_DAYS)
            .filter_map(|i| start.checked_add(i.days()).ok())
            .find_map(|date| self.fires_on(date, tz).into_iter().find(|t| *t > after))
    }

    /// The last fire time at or before `at`, not before `since`.
    pub fn last_at_or_before(&self, at: Timestamp, since: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start = at.to_zoned(tz.clone()).date().checked_add(1.day()).ok()?;
        let floor = since.to_zoned(tz.clone()).date().checked_sub(1.day()).ok()?;
        (0..SEARCH_DAYS)
            .filter_map(|i| start.checked_sub(i.days()).ok())
            .take_while(|date| *date >= floor)
            .find_map(|date| {
                self.fires_on(date, tz)
                    .into_iter()
                    .rev()
                    .find(|t| *t <= at && *t >= since)
            })
    }
}

/// The time zone named `name` (IANA, e.g. `Europe/Berlin`; the database is bundled
/// into the binary, so the image needs no zoneinfo files).
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    TimeZone::get(name).map_err(|_| format!("unknown time zone {name:?} (an IANA name such as Europe/Berlin)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron(s: &str) -> Cron {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn weekday_evenings_in_a_time_zone() {
        let berlin = time_zone("Europe/Berlin").unwrap();
        let sleep = cron("0 20 * * 1-5");
        // Thursday 2026-12-03 12:00 UTC = 13:00 in Berlin: tonight 20:00 CET = 19:00 UTC.
        assert_eq!(
            sleep.next_after(at("2026-12-03T12:00:00Z"), &berlin),
            Some(at("2026-12-03T19:00:00Z"))
        );
        // Friday 20:00, then Monday (the weekend skipped).
        assert_eq!(
            sleep.next_after(at("2026-12-03T19:00:00Z"), &berlin),
            Some(at("2026-12-04T19:00:00Z"))
        );
        assert_eq!(
            sleep.next_after(at("2026-12-04T19:00:00Z"), &berlin),
            Some(at("2026-12-07T19:00:00Z"))
        );
        // The last one before Sunday noon is Friday's.
        let sunday = at("2026-12-06T12:00:00Z");
        assert_eq!(
            sleep.last_at_or_before(sunday, at("2026-12-01T00:00:00Z"), &berlin),
            Some(at("2026-12-04T19:00:00Z"))
        );
        assert_eq!(
            sleep.last_at_or_before(sunday, at("2026-12-05T00:00:00Z"), &berlin),
            None
        );
        // An exact fire time is "at or before" itself.
        let friday = at("2026-12-04T19:00:00Z");
        assert_eq!(sleep.last_at_or_before(friday, friday, &berlin), Some(friday));
    }

    #[test]
    fn fields_lists_ranges_steps_and_names() {
        let c = cron("*/15 9-17/4 * JAN,mar-May sun");
        let utc = TimeZone::UTC;
        // Sunday 2027-01-03: 09:00, 09:15, …, then 13:00.
        assert_eq!(
            c.next_after(at("2026-12-03T00:00:00Z"), &utc),
            Some(at("2027-01-03T09:00:00Z"))
        );
        assert_eq!(
            c.next_after(at("2027-01-03T09:45:00Z"), &utc),
            Some(at("2027-01-03T13:00:00Z"))
        );
        // Day 7 is Sunday too; `5/20` runs from 5 to the maximum.
        assert_eq!(cron("0 0 * * 7"), cron("0 0 * * 0"));
        assert_eq!(cron("5/20 * * * *").minutes, (1 << 5) | (1 << 25) | (1 << 45));
        assert_eq!(cron("@daily"), cron("0 0 * * *"));
        assert_eq!(cron("@weekly"), cron("0 0 * * 0"));
    }

    #[test]
    fn day_of_month_or_day_of_week_unless_one_is_a_star() {
        let utc = TimeZone::UTC;
        // The 15th, or any Monday: Monday 2026-12-07 comes first.
        let either = cron("0 0 15 * 1");
        assert_eq!(
            either.next_after(at("2026-12-03T00:00:00Z"), &utc),
            Some(at("2026-12-07T00:00:00Z"))
        );
        assert_eq!(
            either.next_after(at("2026-12-14T00:00:00Z"), &utc),
            Some(at("2026-12-15T00:00:00Z"))
        );
        // With a star in one of them, both must hold: a star day of month and Fridays
        // is every Friday, not every day.
        let fridays = cron("0 0 * * 5");
        assert_eq!(
            fridays.next_after(at("2026-12-03T00:00:00Z"), &utc),
            Some(at("2026-12-04T00:00:00Z"))
        );
        assert_eq!(
            fridays.next_after(at("2026-12-04T00:00:00Z"), &utc),
            Some(at("2026-12-11T00:00:00Z"))
        );
        // February 29th, years ahead.
        assert_eq!(
            cron("0 0 29 2 *").next_after(at("2026-12-03T00:00:00Z"), &utc),
            Some(at("2028-02-29T00:00:00Z"))
        );
    }

    #[test]
    fn daylight_saving_gaps_and_folds() {
        let berlin = time_zone("Europe/Berlin").unwrap();
        // 2027-03-28 02:30 does not exist in Berlin (02:00 → 03:00): fires at 03:30 CEST = 01:30 UTC.
        let c = cron("30 2 * * *");
        assert_eq!(
            c.next_after(at("2027-03-27T12:00:00Z"), &berlin),
            Some(at("2027-03-28T01:30:00Z"))
        );
        // 2027-10-31 02:30 happens twice: the first (CEST, 00:30 UTC) fires, once.
        assert_eq!(
            c.next_after(at("2027-10-30T12:00:00Z"), &berlin),
            Some(at("2027-10-31T00:30:00Z"))
        );
        assert_eq!(
            c.next_after(at("2027-10-31T00:30:00Z"), &berlin),
            Some(at("2027-11-01T01:30:00Z"))
        );
    }

    #[test]
    fn a_leading_seconds_field() {
        let c = cron("30 15 10 * * *");
        let utc = TimeZone::UTC;
        assert_eq!(
            c.next_after(at("2026-12-03T10:15:29Z"), &utc),
            Some(at("2026-12-03T10:15:30Z"))
        );
        assert_eq!(
            c.next_after(at("2026-12-03T10:15:30Z"), &utc),
            Some(at("2026-12-04T10:15:30Z"))
        );
        assert_eq!(cron("0 15 10 * * *"), cron("15 10 * * *"));
    }

    #[test]
    fn malformed_expressions_say_what_is_wrong() {
        for (expression, problem) in [
            ("0 20 * *", "expected 5 fields"),
            ("0 0 0 20 * * *", "or 6 with seconds first, found 7"),
            ("60 0 20 * * *", "second field"),
            ("60 * * * *", "minute field \"60\": 60 is outside 0-59"),
            ("* 24 * * *", "hour field"),
            ("* * 0 * *", "day-of-month field"),
            ("* * * 13 *", "month field"),
            ("* * * * 8", "day-of-week field"),
            ("*/0 * * * *", "a step of 0"),
            ("5-1 * * * *", "empty"),
            ("* * * FOO *", "not a number or a name"),
            ("@sometimes", "unknown macro"),
        ] {
            let err = expression.parse::<Cron>().unwrap_err().to_string();
            assert!(err.contains(problem), "{expression}: {err}");
        }
        assert!(time_zone("Mars/Olympus").unwrap_err().contains("unknown time zone"));
    }
}
