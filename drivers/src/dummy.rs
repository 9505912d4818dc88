//! The built-in simulator: the living-room fan model and generic generated
//! properties (constant, counter, sine, random). Always compiled in.

use std::f64::consts::PI;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::time::MissedTickBehavior;

use crate::{
    DataType, DeviceCommand, DeviceEvent, DeviceLink, DeviceSpec, DriverError, ErrorKind,
    PropertyAddress, PropertySpec, ReadCause, Readings, Value, WriteOutcome,
};

/// How a simulated property produces its values (one step per read).
#[derive(Debug, Clone, PartialEq)]
pub enum Generator {
    /// Always the same value (until written).
    Constant(Value),
    /// `start`, then `+step` on every read; wraps back to `start` when the
    /// next value would leave the type's range.
    Counter {
        /// First value.
        start: f64,
        /// Increment per read.
        step: f64,
    },
    /// A sine wave between `min` and `max` with the given period, starting at
    /// the midpoint when the device starts.
    Sine {
        /// Lowest value.
        min: f64,
        /// Highest value.
        max: f64,
        /// Length of one wave.
        period: Duration,
    },
    /// Uniformly random between `min` and `max` (inclusive).
    Random {
        /// Lowest value.
        min: f64,
        /// Highest value.
        max: f64,
    },
    /// The fan model's `on` switch (bool).
    FanOn,
    /// The fan model's `gear`: 0 slow, 1 middle, 2 fast.
    FanGear,
    /// The fan model's `rotatingSpeed`.
    FanSpeed,
}

/// The fan model's gear: where its speed starts, how fast it climbs, and its cap.
fn gear_profile(gear: u64) -> (i64, Duration, i64) {
    match gear {
        0 => (0, Duration::from_secs(3), 100),
        1 => (100, Duration::from_secs(2), 200),
        _ => (200, Duration::from_secs(1), 300),
    }
}

/// The living-room fan's state: speed climbs by one every step while on.
#[derive(Debug)]
struct Fan {
    on: bool,
    gear: u64,
    speed: i64,
    last_tick: Instant,
}

impl Fan {
    fn new(now: Instant) -> Self {
        Self {
            on: false,
            gear: 0,
            speed: 0,
            last_tick: now,
        }
    }

    /// Brings the speed up to date with the clock.
    fn advance(&mut self, now: Instant) {
        let (_, step, cap) = gear_profile(self.gear);
        if !self.on || self.speed >= cap {
            self.last_tick = now;
            return;
        }
        let elapsed = now.saturating_duration_since(self.last_tick);
        let steps = (elapsed.as_nanos() / step.as_nanos()) as i64;
        if steps > 0 {
            self.speed = (self.speed + steps).min(cap);
            self.last_tick += step * steps as u32;
        }
    }

    fn set_on(&mut self, on: bool, now: Instant) {
        self.advance(now);
        self.on = on;
        self.last_tick = now;
    }

    fn set_gear(&mut self, gear: u64, now: Instant) {
        self.advance(now);
        self.gear = gear;
        self.speed = gear_profile(gear).0;
        self.last_tick = now;
    }
}

/// What a simulated property remembers between reads; its generator's
/// parameters stay in the shared property list.
#[derive(Debug)]
enum Live {
    /// Generated from the parameters alone (sine, random, constant, fan).
    Generated,
    /// A counter's next value.
    Next(f64),
    /// A value written over the generator.
    Written(Box<Value>),
}

/// A simulated device: its properties' generators plus the fan state.
struct Simulator {
    started: Instant,
    fan: Fan,
    properties: Arc<[PropertySpec]>,
    live: Vec<Live>,
}

impl Simulator {
    fn new(spec: &DeviceSpec) -> Self {
        let now = Instant::now();
        let live = spec
            .properties
            .iter()
            .map(|p| match &p.address {
                PropertyAddress::Simulated(Generator::Counter { start, .. }) => Live::Next(*start),
                _ => Live::Generated,
            })
            .collect();
        Self {
            started: now,
            fan: Fan::new(now),
            properties: Arc::clone(&spec.properties),
            live,
        }
    }

    /// Reads property `index` alone (the fan brought up to `now` first).
    #[cfg(test)]
    fn read(&mut self, index: usize, now: Instant) -> Result<Value, DriverError> {
        self.fan.advance(now);
        let t = now.saturating_duration_since(self.started).as_secs_f64();
        self.value(index, t)
    }

    /// The next value of property `index`, `t` seconds after the start; the
    /// fan must already be up to date.
    fn value(&mut self, index: usize, t: f64) -> Result<Value, DriverError> {
        let (Some(prop), Some(live)) = (self.properties.get(index), self.live.get_mut(index))
        else {
            return Err(DriverError::new(ErrorKind::NotFound, "no such property"));
        };
        let data_type = prop.data_type;
        let PropertyAddress::Simulated(generator) = &prop.address else {
            return Ok(Value::Bool(false));
        };
        match (live, generator) {
            (Live::Written(v), _) => Ok((**v).clone()),
            (Live::Next(next), Generator::Counter { start, step }) => {
                let current = *next;
                let mut following = current + *step;
                if number_of(data_type, following).is_none() {
                    following = *start;
                }
                *next = following;
                number_of(data_type, current).ok_or_else(|| out_of_range(data_type, current))
            }
            (_, Generator::Constant(v)) => Ok(v.clone()),
            (_, Generator::Counter { start, .. }) => {
                number_of(data_type, *start).ok_or_else(|| out_of_range(data_type, *start))
            }
            (_, Generator::Sine { min, max, period }) => {
                let phase = 2.0 * PI * t / period.as_secs_f64().max(1e-3);
                let v = *min + (*max - *min) * (1.0 + phase.sin()) / 2.0;
                number_of(data_type, v).ok_or_else(|| out_of_range(data_type, v))
            }
            (_, Generator::Random { min, max }) => {
                let v = if data_type.is_integer() {
                    rand::random_range(min.ceil() as i64..=max.floor() as i64) as f64
                } else {
                    rand::random_range(*min..=*max)
                };
                number_of(data_type, v).ok_or_else(|| out_of_range(data_type, v))
            }
            (_, Generator::FanOn) => Ok(Value::Bool(self.fan.on)),
            (_, Generator::FanGear) => Ok(Value::Uint(self.fan.gear)),
            (_, Generator::FanSpeed) => Ok(Value::Int(self.fan.speed)),
        }
    }

    fn write(&mut self, index: usize, value: Value, now: Instant) -> Result<(), DriverError> {
        let (Some(prop), Some(live)) = (self.properties.get(index), self.live.get_mut(index))
        else {
            return Err(DriverError::new(ErrorKind::NotFound, "no such property"));
        };
        let generator = match &prop.address {
            PropertyAddress::Simulated(g) => Some(g),
            #[allow(unreachable_patterns)]
            _ => None,
        };
        match (generator, value) {
            (Some(Generator::FanOn), Value::Bool(on)) => self.fan.set_on(on, now),
            (Some(Generator::FanGear), Value::Uint(g)) if g <= 2 => self.fan.set_gear(g, now),
            (Some(Generator::FanGear), v) => {
                return Err(DriverError::new(
                    ErrorKind::Rejected,
                    format!("gear must be 0, 1 or 2, got {v:?}"),
                ))
            }
            (Some(Generator::FanSpeed), _) => {
                return Err(DriverError::new(
                    ErrorKind::Rejected,
                    "rotatingSpeed is read-only",
                ))
            }
            (Some(Generator::Counter { .. }), v) => {
                *live = Live::Next(v.as_f64().ok_or_else(|| {
                    DriverError::new(ErrorKind::Rejected, "counter takes a number")
                })?)
            }
            (_, v) => *live = Live::Written(Box::new(v)),
        }
        Ok(())
    }

    fn read_all(&mut self, cause: ReadCause) -> Readings {
        let now = Instant::now();
        // The clock is read and the fan brought up to date once per poll,
        // not once per property.
        self.fan.advance(now);
        let t = now.saturating_duration_since(self.started).as_secs_f64();
        let values = (0..self.live.len())
            .map(|i| (i, self.value(i, t)))
            .collect();
        Readings {
            at: SystemTime::now(),
            cause,
            values,
            duration: Some(now.elapsed()),
        }
    }
}

fn out_of_range(data_type: DataType, v: f64) -> DriverError {
    DriverError::new(
        ErrorKind::Decode,
        format!("generated value {v} does not fit {data_type}"),
    )
}

/// Converts a generated number to a value of `data_type` (integers rounded),
/// or `None` if it does not fit.
fn number_of(data_type: DataType, v: f64) -> Option<Value> {
    match data_type {
        DataType::Float32 => Some(Value::Float(v as f32 as f64)),
        DataType::Float64 => Some(Value::Float(v)),
        DataType::Bool => Some(Value::Bool(v != 0.0)),
        t if t.is_integer() => {
            if !v.is_finite() {
                return None;
            }
            Value::integer_of(t, v.round() as i128)
        }
        DataType::String => Some(Value::String(v.to_string())),
        _ => None,
    }
}

/// Runs a simulated device until cancelled. Only what the loop needs goes
/// into the returned future, not the whole spec (whose connection settings,
/// of whichever driver is largest, would sit in every simulated device).
pub(crate) fn run(
    spec: DeviceSpec,
    mut link: DeviceLink,
) -> impl std::future::Future<Output = ()> + Send {
    let mut sim = Simulator::new(&spec);
    let period = spec.sync_interval.max(Duration::from_millis(1));
    // An async block rather than an async fn: a function's arguments would
    // be stored twice in its future, as arguments and as locals.
    async move {
        let mut ticker = tokio::time::interval(period);
        // Polls stay on the grid of syncInterval: a tick handled late (busy
        // machine, slow consumer) does not push every later poll back, which
        // with `Delay` lost the lateness from the poll rate for good.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        if link.events.send(DeviceEvent::Online).await.is_err() {
            return;
        }
        loop {
            let readings = tokio::select! {
                _ = link.cancel.cancelled() => return,
                _ = ticker.tick() => sim.read_all(ReadCause::Poll),
                cmd = link.commands.recv() => match cmd {
                    None => return,
                    Some(DeviceCommand::ReadNow) => sim.read_all(ReadCause::Forced),
                    Some(DeviceCommand::Write { writes, reply }) => {
                        let now = Instant::now();
                        let mut outcome = WriteOutcome::default();
                        for (n, (index, value)) in writes.into_iter().enumerate() {
                            match sim.write(index, value, now) {
                                Ok(()) => outcome.applied += 1,
                                Err(e) => {
                                    outcome.failed = Some((n, e));
                                    break;
                                }
                            }
                        }
                        let _ = reply.send(outcome);
                        sim.read_all(ReadCause::Forced)
                    }
                },
            };
            tokio::select! {
                _ = link.cancel.cancelled() => return,
                sent = link.events.send(DeviceEvent::Readings(readings)) => if sent.is_err() { return },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Connection, PropertySpec};

    fn spec(props: Vec<(DataType, Generator)>) -> DeviceSpec {
        DeviceSpec {
            name: "sim".into(),
            sync_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            connection: Connection::Dummy,
            properties: props
                .into_iter()
                .enumerate()
                .map(|(i, (t, g))| PropertySpec {
                    name: format!("p{i}").into(),
                    data_type: t,
                    writable: true,
                    address: PropertyAddress::Simulated(g),
                })
                .collect(),
        }
    }

    #[test]
    fn counter_starts_at_start_and_steps_per_read() {
        let mut sim = Simulator::new(&spec(vec![(
            DataType::Uint32,
            Generator::Counter {
                start: 5.0,
                step: 2.0,
            },
        )]));
        let now = Instant::now();
        let got: Vec<_> = (0..3).map(|_| sim.read(0, now).unwrap()).collect();
        assert_eq!(got, vec![Value::Uint(5), Value::Uint(7), Value::Uint(9)]);
    }

    #[test]
    fn counter_wraps_to_start_at_type_limit() {
        let mut sim = Simulator::new(&spec(vec![(
            DataType::Uint8,
            Generator::Counter {
                start: 254.0,
                step: 1.0,
            },
        )]));
        let now = Instant::now();
        let got: Vec<_> = (0..3).map(|_| sim.read(0, now).unwrap()).collect();
        assert_eq!(
            got,
            vec![Value::Uint(254), Value::Uint(255), Value::Uint(254)]
        );
    }

    #[test]
    fn sine_and_random_stay_in_bounds() {
        let mut sim = Simulator::new(&spec(vec![
            (
                DataType::Float64,
                Generator::Sine {
                    min: 18.0,
                    max: 24.0,
                    period: Duration::from_secs(60),
                },
            ),
            (
                DataType::Int16,
                Generator::Random {
                    min: -3.0,
                    max: 3.0,
                },
            ),
        ]));
        let start = Instant::now();
        for s in 0..120 {
            let now = start + Duration::from_millis(s * 500);
            let sine = sim.read(0, now).unwrap().as_f64().unwrap();
            assert!((18.0..=24.0).contains(&sine), "{sine}");
            let r = sim.read(1, now).unwrap().as_i128().unwrap();
            assert!((-3..=3).contains(&r), "{r}");
        }
    }

    #[test]
    fn fan_speed_resets_on_gear_change_and_climbs_while_on() {
        let mut sim = Simulator::new(&spec(vec![
            (DataType::Bool, Generator::FanOn),
            (DataType::Uint8, Generator::FanGear),
            (DataType::Int32, Generator::FanSpeed),
        ]));
        let t0 = Instant::now();
        sim.write(1, Value::Uint(1), t0).unwrap();
        assert_eq!(sim.read(2, t0).unwrap(), Value::Int(100));
        // Off: no climbing.
        assert_eq!(
            sim.read(2, t0 + Duration::from_secs(10)).unwrap(),
            Value::Int(100)
        );
        let t1 = t0 + Duration::from_secs(10);
        sim.write(0, Value::Bool(true), t1).unwrap();
        // Middle gear: +1 every 2 s.
        assert_eq!(
            sim.read(2, t1 + Duration::from_secs(7)).unwrap(),
            Value::Int(103)
        );
        // Capped at 200.
        assert_eq!(
            sim.read(2, t1 + Duration::from_secs(1000)).unwrap(),
            Value::Int(200)
        );
        let t2 = t1 + Duration::from_secs(1000);
        sim.write(1, Value::Uint(2), t2).unwrap();
        assert_eq!(sim.read(2, t2).unwrap(), Value::Int(200));
        assert_eq!(
            sim.read(2, t2 + Duration::from_secs(5)).unwrap(),
            Value::Int(205)
        );
        sim.write(1, Value::Uint(0), t2 + Duration::from_secs(5))
            .unwrap();
        assert_eq!(
            sim.read(2, t2 + Duration::from_secs(5)).unwrap(),
            Value::Int(0)
        );
        assert!(sim.write(1, Value::Uint(7), t2).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn polls_stay_on_the_interval_grid_after_a_late_tick() {
        let mut spec = spec(vec![(
            DataType::Uint32,
            Generator::Counter {
                start: 0.0,
                step: 1.0,
            },
        )]);
        spec.sync_interval = Duration::from_millis(100);
        let (events_tx, mut events) = crate::event_channel(1);
        let (_commands_tx, commands) = crate::command_channel(1);
        let cancel = tokio_util::sync::CancellationToken::new();
        let start = tokio::time::Instant::now();
        let driver = tokio::spawn(run(
            spec,
            DeviceLink {
                events: events_tx,
                commands,
                cancel: cancel.clone(),
            },
        ));
        // A consumer that stalls for 1.05 s: the driver waits to hand over
        // its first reading, so its next tick is handled 950 ms late.
        tokio::time::sleep(Duration::from_millis(1050)).await;
        let mut readings = Vec::new();
        while readings.len() < 5 {
            match events.recv().await {
                Some(DeviceEvent::Readings(_)) => {
                    readings.push(start.elapsed().as_millis());
                }
                Some(_) => {}
                None => panic!("the driver stopped"),
            }
        }
        cancel.cancel();
        driver.await.unwrap();
        // The stalled reading, the late tick at once, then back on the
        // 100 ms grid (`Delay` would continue at 1150, 1250, ...).
        assert_eq!(readings, vec![1050, 1050, 1100, 1200, 1300]);
    }

    #[test]
    fn written_values_are_read_back() {
        let mut sim = Simulator::new(&spec(vec![(
            DataType::Float32,
            Generator::Constant(Value::Float(21.0)),
        )]));
        let now = Instant::now();
        assert_eq!(sim.read(0, now).unwrap(), Value::Float(21.0));
        sim.write(0, Value::Float(22.5), now).unwrap();
        assert_eq!(sim.read(0, now).unwrap(), Value::Float(22.5));
    }
}
