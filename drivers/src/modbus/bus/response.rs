//! Read requests of the planner and the decoding of their responses into property values.

use tokio_modbus::{Request, Response};

use crate::modbus::codec::{decode_bit, decode_registers, width};
use crate::modbus::plan::ReadRequest;
use crate::modbus::RegisterKind;
use crate::{DriverError, ErrorKind, Value};

pub(super) fn unexpected(response: &Response) -> DriverError {
    DriverError::new(
        ErrorKind::Decode,
        format!("unexpected response {:?}", response.function_code()),
    )
}

pub(super) fn read_request(r: &ReadRequest) -> Request<'static> {
    match r.kind {
        RegisterKind::Coil => Request::ReadCoils(r.start, r.count),
        RegisterKind::DiscreteInput => Request::ReadDiscreteInputs(r.start, r.count),
        RegisterKind::Input => Request::ReadInputRegisters(r.start, r.count),
        RegisterKind::Holding => Request::ReadHoldingRegisters(r.start, r.count),
    }
}

pub(super) fn fail_items(
    values: &mut Vec<(usize, Result<Value, DriverError>)>,
    request: &ReadRequest,
    err: &DriverError,
) {
    values.extend(request.items.iter().map(|i| (i.index, Err(err.clone()))));
}

pub(super) fn decode_response(
    values: &mut Vec<(usize, Result<Value, DriverError>)>,
    request: &ReadRequest,
    response: Response,
) {
    let short = |need: u16, got: usize| {
        DriverError::new(
            ErrorKind::Decode,
            format!("short response: {got} of {need} values"),
        )
    };
    match (request.kind, response) {
        (RegisterKind::Coil, Response::ReadCoils(bits))
        | (RegisterKind::DiscreteInput, Response::ReadDiscreteInputs(bits)) => {
            for item in &request.items {
                let offset = (item.address.address - request.start) as usize;
                let result = match bits.get(offset) {
                    Some(bit) if bits.len() >= request.count as usize => {
                        decode_bit(item.data_type, *bit)
                    }
                    _ => Err(short(request.count, bits.len())),
                };
                values.push((item.index, result));
            }
        }
        (RegisterKind::Holding, Response::ReadHoldingRegisters(regs))
        | (RegisterKind::Input, Response::ReadInputRegisters(regs)) => {
            for item in &request.items {
                let offset = (item.address.address - request.start) as usize;
                let end = offset + width(item.data_type, &item.address) as usize;
                let result = match regs.get(offset..end) {
                    Some(slice) if regs.len() == request.count as usize => {
                        decode_registers(item.data_type, &item.address, slice)
                    }
                    _ if regs.len() != request.count as usize => Err(DriverError::new(
                        ErrorKind::Decode,
                        format!(
                            "wrong response length: {} registers for {}",
                            regs.len(),
                            request.count
                        ),
                    )),
                    _ => Err(short(request.count, regs.len())),
                };
                values.push((item.index, result));
            }
        }
        (_, other) => {
            let err = unexpected(&other);
            fail_items(values, request, &err);
        }
    }
}
