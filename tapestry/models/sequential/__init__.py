"""Sequential user encoders: SASRec (+ graph fusion), BERT4Rec (bidirectional, Cloze), ComiRec-SA (K interests)."""
