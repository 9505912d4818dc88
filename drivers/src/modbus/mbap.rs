//! A Modbus TCP (MBAP) client with frame-sized buffers.
//!
//! tokio-modbus's own TCP client frames the stream with tokio-util's
//! `Framed`, which allocates 8 KiB for reading and 8 KiB for writing on every
//! connection, while a Modbus TCP frame is at most 260 bytes. With one
//! connection per device (the common case: one PLC or meter per IP address)
//! that was the largest part of a Modbus gateway's memory: 8 MiB for 500
//! devices. This client keeps one 260-byte buffer per connection and plugs
//! into tokio-modbus's [`Client`] interface, so everything else (request and
//! response types, PDU decoding, exceptions) stays tokio-modbus's. RTU and
//! RTU over TCP keep tokio-modbus's transport.

use std::io;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_modbus::bytes::Bytes;
use tokio_modbus::client::Client;
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::{ExceptionResponse, ProtocolError, Request, Response, Slave};

/// The MBAP header: transaction id, protocol id, length, unit id.
const HEADER_LEN: usize = 7;
/// The largest Modbus PDU (Modbus application protocol v1.1b3, §4.1).
const MAX_PDU_LEN: usize = 253;
/// The largest Modbus TCP frame.
const MAX_ADU_LEN: usize = HEADER_LEN + MAX_PDU_LEN;
/// Modbus's protocol identifier in the MBAP header.
const PROTOCOL_ID: u16 = 0;

/// One Modbus TCP connection: one transaction at a time.
#[derive(Debug)]
pub struct MbapClient {
    stream: Option<TcpStream>,
    unit: u8,
    next_transaction: u16,
    /// Received bytes not yet consumed (at most one frame).
    received: Vec<u8>,
}

impl MbapClient {
    /// A client on a connected `stream`, addressing unit `slave`.
    pub fn new(stream: TcpStream, slave: Slave) -> Self {
        Self {
            stream: Some(stream),
            unit: slave.0,
            next_transaction: 0,
            received: Vec::with_capacity(MAX_ADU_LEN),
        }
    }

    async fn transact(&mut self, request: Request<'_>) -> tokio_modbus::Result<Response> {
        let function = request.function_code();
        let transaction = self.next_transaction;
        self.next_transaction = transaction.wrapping_add(1);
        let mut frame = [0u8; MAX_ADU_LEN];
        let len = encode_request(&mut frame, transaction, self.unit, &request)?;
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "disconnected"))?;
        // Bytes left from a transaction that was given up (timed out) belong
        // to no request any more.
        self.received.clear();
        stream.write_all(&frame[..len]).await?;
        let (header, pdu) = read_frame(stream, &mut self.received).await?;
        let result = match pdu.first() {
            Some(code) if *code >= 0x80 => Err(ExceptionResponse::try_from(pdu)?),
            _ => Ok(Response::try_from(pdu)?),
        };
        if header.transaction != transaction || header.unit != self.unit {
            let message = format!(
                "expected transaction {transaction} of unit {}, got transaction {} of unit {}",
                self.unit, header.transaction, header.unit
            );
            return Err(ProtocolError::HeaderMismatch { message, result }.into());
        }
        let answered = match &result {
            Ok(response) => response.function_code(),
            Err(exception) => exception.function,
        };
        if answered != function {
            return Err(ProtocolError::FunctionCodeMismatch {
                request: function,
                result,
            }
            .into());
        }
        Ok(result.map_err(|e| e.exception))
    }
}

impl SlaveContext for MbapClient {
    fn set_slave(&mut self, slave: Slave) {
        self.unit = slave.0;
    }
}

#[async_trait::async_trait]
impl Client for MbapClient {
    async fn call(&mut self, request: Request<'_>) -> tokio_modbus::Result<Response> {
        self.transact(request).await
    }

    async fn disconnect(&mut self) -> io::Result<()> {
        match self.stream.take() {
            Some(mut stream) => match stream.shutdown().await {
                // The peer may have closed first.
                Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
                _ => Ok(()),
            },
            None => Ok(()),
        }
    }
}

/// The parts of an MBAP header a client checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    transaction: u16,
    unit: u8,
}

/// Reads one frame from `stream` into `buf` and returns its header and PDU.
/// `buf` holds at most `MAX_ADU_LEN` bytes: `parse_frame` refuses longer
/// frames once their header is in.
async fn read_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<(Header, Bytes)> {
    loop {
        if let Some(frame) = parse_frame(buf)? {
            return Ok(frame);
        }
        // One read usually brings the whole answer (one transaction is in
        // flight); bytes after it are dropped before the next request.
        let start = buf.len();
        buf.resize(MAX_ADU_LEN.max(start + 1), 0);
        let got = stream.read(&mut buf[start..]).await;
        buf.truncate(start + got.as_ref().map_or(0, |n| *n));
        match got {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(e),
        }
    }
}

/// The length of the frame `buf` starts, once its header is complete.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let length = u16::from_be_bytes([*buf.get(4)?, *buf.get(5)?]);
    // The length field counts the unit id and the PDU.
    Some(HEADER_LEN - 1 + usize::from(length))
}

/// The frame at the start of `buf` when it is complete (consuming it), or
/// `None` when more bytes are needed. A header that cannot start a Modbus TCP
/// response is an `InvalidData` error (the stream is out of step).
fn parse_frame(buf: &mut Vec<u8>) -> io::Result<Option<(Header, Bytes)>> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let protocol = u16::from_be_bytes([buf[2], buf[3]]);
    if protocol != PROTOCOL_ID {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("invalid MBAP protocol identifier {protocol}"),
        ));
    }
    let len = frame_len(buf).unwrap_or(0);
    if len <= HEADER_LEN || len > MAX_ADU_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "invalid MBAP length {} (a PDU is 1 to {MAX_PDU_LEN} bytes)",
                len - (HEADER_LEN - 1)
            ),
        ));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let header = Header {
        transaction: u16::from_be_bytes([buf[0], buf[1]]),
        unit: buf[6],
    };
    let pdu = Bytes::copy_from_slice(&buf[HEADER_LEN..len]);
    buf.drain(..len);
    Ok(Some((header, pdu)))
}

/// Writes the frame of `request` into `frame` and returns its length.
fn encode_request(
    frame: &mut [u8; MAX_ADU_LEN],
    transaction: u16,
    unit: u8,
    request: &Request<'_>,
) -> io::Result<usize> {
    let mut pdu = PduWriter {
        buf: &mut frame[HEADER_LEN..],
        len: 0,
    };
    pdu.u8(request.function_code().value())?;
    match request {
        Request::ReadCoils(address, count)
        | Request::ReadDiscreteInputs(address, count)
        | Request::ReadInputRegisters(address, count)
        | Request::ReadHoldingRegisters(address, count) => {
            pdu.u16(*address)?;
            pdu.u16(*count)?;
        }
        Request::WriteSingleCoil(address, on) => {
            pdu.u16(*address)?;
            pdu.u16(if *on { 0xFF00 } else { 0x0000 })?;
        }
        Request::WriteSingleRegister(address, word) => {
            pdu.u16(*address)?;
            pdu.u16(*word)?;
        }
        Request::WriteMultipleCoils(address, coils) => {
            pdu.u16(*address)?;
            pdu.u16(count_of(coils.len())?)?;
            let bytes = coils.len().div_ceil(8);
            pdu.u8(u8::try_from(bytes).map_err(|_| too_large())?)?;
            for chunk in coils.chunks(8) {
                let packed = chunk
                    .iter()
                    .enumerate()
                    .fold(0u8, |acc, (i, on)| acc | (u8::from(*on) << i));
                pdu.u8(packed)?;
            }
        }
        Request::WriteMultipleRegisters(address, words) => {
            pdu.u16(*address)?;
            pdu.u16(count_of(words.len())?)?;
            pdu.u8(u8::try_from(words.len() * 2).map_err(|_| too_large())?)?;
            for word in words.iter() {
                pdu.u16(*word)?;
            }
        }
        other => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "function {} is not used by fieldgate's Modbus TCP client",
                    other.function_code()
                ),
            ))
        }
    }
    let pdu_len = pdu.len;
    let length = u16::try_from(pdu_len + 1).map_err(|_| too_large())?;
    frame[0..2].copy_from_slice(&transaction.to_be_bytes());
    frame[2..4].copy_from_slice(&PROTOCOL_ID.to_be_bytes());
    frame[4..6].copy_from_slice(&length.to_be_bytes());
    frame[6] = unit;
    Ok(HEADER_LEN + pdu_len)
}

/// Appends big-endian fields to a PDU, refusing to outgrow it.
struct PduWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl PduWriter<'_> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        let end = self.len + bytes.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or_else(too_large)?
            .copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }

    fn u8(&mut self, v: u8) -> io::Result<()> {
        self.put(&[v])
    }

    fn u16(&mut self, v: u16) -> io::Result<()> {
        self.put(&v.to_be_bytes())
    }
}

fn count_of(n: usize) -> io::Result<u16> {
    u16::try_from(n).map_err(|_| too_large())
}

fn too_large() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "request larger than a Modbus PDU",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(request: Request<'_>) -> Vec<u8> {
        let mut frame = [0u8; MAX_ADU_LEN];
        let len = encode_request(&mut frame, 0x0102, 0x11, &request).unwrap();
        frame[..len].to_vec()
    }

    #[test]
    fn requests_encode_as_the_spec_examples() {
        // Modbus application protocol v1.1b3, §6.3: read holding registers
        // 108..110 (address 0x006B, 3 registers).
        assert_eq!(
            encode(Request::ReadHoldingRegisters(0x006B, 3)),
            [1, 2, 0, 0, 0, 6, 0x11, 0x03, 0x00, 0x6B, 0x00, 0x03]
        );
        assert_eq!(
            encode(Request::ReadCoils(0x0013, 0x13)),
            [1, 2, 0, 0, 0, 6, 0x11, 0x01, 0x00, 0x13, 0x00, 0x13]
        );
        assert_eq!(
            encode(Request::ReadDiscreteInputs(0x00C4, 0x16))[7..],
            [0x02, 0x00, 0xC4, 0x00, 0x16]
        );
        assert_eq!(
            encode(Request::ReadInputRegisters(0x0008, 1))[7..],
            [0x04, 0x00, 0x08, 0x00, 0x01]
        );
        // §6.5 write single coil 173 ON; §6.6 register 2 := 3.
        assert_eq!(
            encode(Request::WriteSingleCoil(0x00AC, true))[7..],
            [0x05, 0x00, 0xAC, 0xFF, 0x00]
        );
        assert_eq!(
            encode(Request::WriteSingleCoil(0x00AC, false))[7..],
            [0x05, 0x00, 0xAC, 0x00, 0x00]
        );
        assert_eq!(
            encode(Request::WriteSingleRegister(0x0001, 0x0003))[7..],
            [0x06, 0x00, 0x01, 0x00, 0x03]
        );
        // §6.11: coils 20..29 := 1100 1101 01; §6.12: registers 2..3.
        let coils = [
            true, false, true, true, false, false, true, true, true, false,
        ];
        assert_eq!(
            encode(Request::WriteMultipleCoils(0x0013, coils[..].into())),
            [1, 2, 0, 0, 0, 9, 0x11, 0x0F, 0x00, 0x13, 0x00, 0x0A, 0x02, 0xCD, 0x01]
        );
        assert_eq!(
            encode(Request::WriteMultipleRegisters(
                0x0001,
                [0x000A, 0x0102][..].into()
            )),
            [1, 2, 0, 0, 0, 11, 0x11, 0x10, 0x00, 0x01, 0x00, 0x02, 0x04, 0x00, 0x0A, 0x01, 0x02]
        );
    }

    #[test]
    fn requests_larger_than_a_pdu_are_refused() {
        let words = vec![0u16; 127];
        let mut frame = [0u8; MAX_ADU_LEN];
        let err = encode_request(
            &mut frame,
            0,
            1,
            &Request::WriteMultipleRegisters(0, words.into()),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        // 123 registers (FC16's limit) fit.
        let words = vec![0u16; 123];
        assert!(encode_request(
            &mut frame,
            0,
            1,
            &Request::WriteMultipleRegisters(0, words.into())
        )
        .is_ok());
    }

    #[test]
    fn frames_are_parsed_only_when_complete() {
        let frame = [0, 7, 0, 0, 0, 5, 1, 0x03, 0x02, 0x12, 0x34];
        for cut in 0..frame.len() {
            let mut buf = frame[..cut].to_vec();
            assert!(parse_frame(&mut buf).unwrap().is_none(), "cut at {cut}");
            assert_eq!(buf.len(), cut);
        }
        let mut buf = frame.to_vec();
        let (header, pdu) = parse_frame(&mut buf).unwrap().unwrap();
        assert_eq!(
            header,
            Header {
                transaction: 7,
                unit: 1
            }
        );
        assert_eq!(&pdu[..], &[0x03, 0x02, 0x12, 0x34]);
        assert!(buf.is_empty());
        assert_eq!(
            Response::try_from(pdu).unwrap(),
            Response::ReadHoldingRegisters(vec![0x1234])
        );
    }

    #[test]
    fn bad_headers_are_invalid_data() {
        for frame in [
            // protocol id 1
            vec![0, 1, 0, 1, 0, 3, 1, 0x83, 0x02],
            // length 1: a unit id and no PDU
            vec![0, 1, 0, 0, 0, 1, 1],
            // length 255: longer than any PDU
            vec![0, 1, 0, 0, 0, 255, 1],
        ] {
            let err = parse_frame(&mut frame.clone()).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{frame:?}");
        }
    }
}
