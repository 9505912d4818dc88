//! Opening connections: Modbus TCP, RTU on a serial line, RTU framing over a
//! TCP stream; and the RTU inter-frame gap.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_modbus::client::{rtu, Client, Context};
use tokio_modbus::Slave;

use super::mbap::MbapClient;
use super::{Parity, SerialSettings, Transport};
use crate::{DriverError, ErrorKind};

/// Opens a client context on `transport` within `timeout`. A host name is
/// resolved first, within the resolver's own time limit (see
/// [`crate::resolve`]): a slow name server does not eat the device timeout.
pub async fn connect(transport: &Transport, timeout: Duration) -> Result<Context, DriverError> {
    let addrs = match transport {
        Transport::Tcp { endpoint } | Transport::RtuOverTcp { endpoint } => {
            Some(crate::resolve::resolve(endpoint).await?)
        }
        Transport::Rtu(_) => None,
    };
    let opening = async {
        match (transport, addrs) {
            (Transport::Tcp { endpoint }, Some(addrs)) => {
                let stream = tcp_stream(endpoint, &addrs).await?;
                let client: Box<dyn Client> = Box::new(MbapClient::new(stream, Slave(1)));
                Ok(Context::from(client))
            }
            (Transport::RtuOverTcp { endpoint }, Some(addrs)) => {
                let stream = tcp_stream(endpoint, &addrs).await?;
                Ok(rtu::attach_slave(stream, Slave(1)))
            }
            (Transport::Rtu(settings), _) => {
                let port = open_serial(settings)?;
                Ok(rtu::attach_slave(port, Slave(1)))
            }
            (_, None) => Err(DriverError::new(ErrorKind::Io, "no address")),
        }
    };
    match tokio::time::timeout(timeout, opening).await {
        Ok(result) => result,
        Err(_) => Err(DriverError::new(
            ErrorKind::Timeout,
            format!(
                "connect to {} timed out after {}",
                describe(transport),
                humantime::format_duration(timeout)
            ),
        )),
    }
}

/// `tcp://host:port`, `rtu:///dev/ttyUSB0`, `rtu+tcp://host:port` for logs.
pub fn describe(transport: &Transport) -> String {
    match transport {
        Transport::Tcp { endpoint } => format!("tcp://{endpoint}"),
        Transport::RtuOverTcp { endpoint } => format!("rtu+tcp://{endpoint}"),
        Transport::Rtu(s) => format!("rtu://{}", s.port),
    }
}

async fn tcp_stream(
    endpoint: &str,
    addrs: &[std::net::SocketAddr],
) -> Result<TcpStream, DriverError> {
    let stream = TcpStream::connect(addrs)
        .await
        .map_err(|e| DriverError::new(ErrorKind::Io, format!("connect to {endpoint}: {e}")))?;
    // Requests are small and latency matters more than throughput.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

fn open_serial(s: &SerialSettings) -> Result<tokio_serial::SerialStream, DriverError> {
    use tokio_serial::SerialPortBuilderExt as _;
    let data_bits = match s.data_bits {
        5 => tokio_serial::DataBits::Five,
        6 => tokio_serial::DataBits::Six,
        7 => tokio_serial::DataBits::Seven,
        _ => tokio_serial::DataBits::Eight,
    };
    let parity = match s.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let stop_bits = if s.stop_bits >= 2 {
        tokio_serial::StopBits::Two
    } else {
        tokio_serial::StopBits::One
    };
    tokio_serial::new(&s.port, s.baud_rate)
        .data_bits(data_bits)
        .parity(parity)
        .stop_bits(stop_bits)
        .flow_control(tokio_serial::FlowControl::None)
        .open_native_async()
        .map_err(|e| DriverError::new(ErrorKind::Io, format!("open {}: {e}", s.port)))
}

/// The silent interval required between RTU frames: 3.5 character times,
/// fixed at 1.75 ms above 19200 baud (Modbus over serial line, §2.5.1.1).
pub fn inter_frame_gap(s: &SerialSettings) -> Duration {
    if s.baud_rate == 0 || s.baud_rate > 19_200 {
        return Duration::from_micros(1750);
    }
    let parity_bits = u64::from(s.parity != Parity::None);
    let bits_per_char = 1 + u64::from(s.data_bits) + parity_bits + u64::from(s.stop_bits.max(1));
    Duration::from_nanos(bits_per_char * 3_500_000_000 / u64::from(s.baud_rate))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serial(baud_rate: u32, parity: Parity) -> SerialSettings {
        SerialSettings {
            port: "/dev/null".into(),
            baud_rate,
            data_bits: 8,
            parity,
            stop_bits: 1,
        }
    }

    #[test]
    fn gap_is_three_and_a_half_characters() {
        // 11 bits per character at 9600 baud: 3.5 × 11 / 9600 s ≈ 4.01 ms.
        assert_eq!(
            inter_frame_gap(&serial(9600, Parity::Even)),
            Duration::from_nanos(4_010_416)
        );
        // 10 bits per character without parity.
        assert_eq!(
            inter_frame_gap(&serial(19200, Parity::None)),
            Duration::from_nanos(1_822_916)
        );
        assert_eq!(
            inter_frame_gap(&serial(115_200, Parity::None)),
            Duration::from_micros(1750)
        );
    }
}
