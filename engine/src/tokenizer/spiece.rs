//! Reading a SentencePiece `spiece.model`: the `ModelProto` protobuf, parsed by hand for the
//! fields a Unigram tokenizer needs (`sentencepiece_model.proto`): the pieces with their
//! scores and types (field 1), the trainer's model type, `byte_fallback` and `unk_id`
//! (field 2: fields 3, 35 and 40) and the normalizer's `precompiled_charsmap` (field 3:
//! field 2). Everything else is skipped.

/// How SentencePiece treats a piece (`SentencePiece.Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    /// An ordinary piece.
    Normal,
    /// The unknown piece.
    Unknown,
    /// A control symbol (`<pad>`, `</s>`): never produced from text by SentencePiece.
    Control,
    /// A user-defined symbol, always kept whole.
    UserDefined,
    /// A byte-fallback piece (`<0x41>`).
    Byte,
    /// An unused piece.
    Unused,
}

/// One vocabulary entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// The piece's text (`▁` for a word start).
    pub piece: String,
    /// Its log-probability (Unigram).
    pub score: f32,
    /// Its kind.
    pub kind: PieceType,
}

/// The parts of a `ModelProto` a Unigram tokenizer is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct SpModel {
    /// The vocabulary, id order.
    pub pieces: Vec<Piece>,
    /// `TrainerSpec.model_type`: 1 Unigram, 2 BPE, 3 word, 4 char.
    pub model_type: u64,
    /// `TrainerSpec.byte_fallback`.
    pub byte_fallback: bool,
    /// `TrainerSpec.unk_id`.
    pub unk_id: usize,
    /// `NormalizerSpec.precompiled_charsmap`, if the model normalizes.
    pub precompiled_charsmap: Option<Vec<u8>>,
}

/// A protobuf field's value, by wire type.
enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// Walks the fields of one protobuf message.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| format!("varint runs past the end at byte {}", self.pos))?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!("varint longer than 10 bytes at byte {}", self.pos))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or_else(|| format!("field of {n} bytes at byte {} runs past the end", self.pos))?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    /// The next `(field number, value)`, or `None` at the end of the message.
    fn next_field(&mut self) -> Result<Option<(u64, Value<'a>)>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|e| e.to_string())?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                let b = self.take(4)?;
                Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            other => {
                return Err(format!(
                    "unsupported wire type {other} at byte {}",
                    self.pos
                ))
            }
        };
        Ok(Some((key >> 3, value)))
    }
}

impl SpModel {
    /// Parses a serialized `ModelProto`; the message names what is malformed.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let mut model = SpModel {
            pieces: Vec::new(),
            model_type: 1,
            byte_fallback: false,
            unk_id: 0,
            precompiled_charsmap: None,
        };
        let mut fields = Fields::new(bytes);
        while let Some((number, value)) = fields.next_field()? {
            match (number, value) {
                (1, Value::Bytes(b)) => model.pieces.push(parse_piece(b)?),
                (2, Value::Bytes(b)) => model.read_trainer_spec(b)?,
                (3, Value::Bytes(b)) => model.read_normalizer_spec(b)?,
                _ => {}
            }
        }
        if model.pieces.is_empty() {
            return Err("the model has no pieces; is this a SentencePiece model file?".into());
        }
        Ok(model)
    }

    fn read_trainer_spec(&mut self, bytes: &[u8]) -> Result<(), String> {
        let mut fields = Fields::new(bytes);
        while let Some((number, value)) = fields.next_field()? {
            match (number, value) {
                (3, Value::Varint(v)) => self.model_type = v,
                (35, Value::Varint(v)) => self.byte_fallback = v != 0,
                (40, Value::Varint(v)) => {
                    // int32: negative values arrive as 10-byte two's complement.
                    self.unk_id = usize::try_from(v as i64)
                        .map_err(|_| format!("trainer_spec.unk_id {} is negative", v as i64))?
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn read_normalizer_spec(&mut self, bytes: &[u8]) -> Result<(), String> {
        let mut fields = Fields::new(bytes);
        while let Some((number, value)) = fields.next_field()? {
            if let (2, Value::Bytes(b)) = (number, value) {
                self.precompiled_charsmap = (!b.is_empty()).then(|| b.to_vec());
            }
        }
        Ok(())
    }
}

fn parse_piece(bytes: &[u8]) -> Result<Piece, String> {
    let mut piece = Piece {
        piece: String::new(),
        score: 0.0,
        kind: PieceType::Normal,
    };
    let mut fields = Fields::new(bytes);
    while let Some((number, value)) = fields.next_field()? {
        match (number, value) {
            (1, Value::Bytes(b)) => {
                piece.piece = String::from_utf8(b.to_vec())
                    .map_err(|e| format!("a piece is not UTF-8: {e}"))?
            }
            (2, Value::Fixed32(bits)) => piece.score = f32::from_bits(bits),
            (3, Value::Varint(t)) => {
                piece.kind = match t {
                    1 => PieceType::Normal,
                    2 => PieceType::Unknown,
                    3 => PieceType::Control,
                    4 => PieceType::UserDefined,
                    5 => PieceType::Unused,
                    6 => PieceType::Byte,
                    other => {
                        return Err(format!("piece {:?} has unknown type {other}", piece.piece))
                    }
                }
            }
            _ => {}
        }
    }
    Ok(piece)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A protobuf key for `field` with wire type `wire`.
    fn key(field: u64, wire: u64) -> Vec<u8> {
        varint(field << 3 | wire)
    }

    fn varint(mut v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    fn bytes_field(field: u64, body: &[u8]) -> Vec<u8> {
        let mut out = key(field, 2);
        out.extend(varint(body.len() as u64));
        out.extend_from_slice(body);
        out
    }

    fn piece(text: &str, score: f32, kind: Option<u64>) -> Vec<u8> {
        let mut body = bytes_field(1, text.as_bytes());
        body.extend(key(2, 5));
        body.extend(score.to_le_bytes());
        if let Some(k) = kind {
            body.extend(key(3, 0));
            body.extend(varint(k));
        }
        bytes_field(1, &body)
    }

    #[test]
    fn parses_pieces_trainer_and_normalizer_specs() {
        let mut proto = piece("<pad>", 0.0, Some(3));
        proto.extend(piece("<unk>", 0.0, Some(2)));
        proto.extend(piece("▁a", -1.5, None));
        let mut trainer = key(3, 0);
        trainer.extend(varint(1));
        trainer.extend(key(40, 0));
        trainer.extend(varint(1));
        trainer.extend(key(7, 1)); // a fixed64 field to skip
        trainer.extend([0u8; 8]);
        proto.extend(bytes_field(2, &trainer));
        let mut normalizer = bytes_field(1, b"nmt_nfkc");
        normalizer.extend(bytes_field(2, &[1, 2, 3]));
        proto.extend(bytes_field(3, &normalizer));
        let model = SpModel::parse(&proto).unwrap();
        assert_eq!(model.pieces.len(), 3);
        assert_eq!(model.pieces[0].kind, PieceType::Control);
        assert_eq!(model.pieces[2].piece, "▁a");
        assert_eq!(model.pieces[2].score, -1.5);
        assert_eq!(model.pieces[2].kind, PieceType::Normal);
        assert_eq!(model.unk_id, 1);
        assert_eq!(model.precompiled_charsmap, Some(vec![1, 2, 3]));
    }

    #[test]
    fn truncated_or_foreign_files_are_refused() {
        let mut proto = piece("▁a", -1.0, None);
        proto.pop();
        assert!(SpModel::parse(&proto).unwrap_err().contains("past the end"));
        assert!(SpModel::parse(b"").unwrap_err().contains("no pieces"));
        assert!(SpModel::parse(&[0x0f]).unwrap_err().contains("wire type"));
    }
}
