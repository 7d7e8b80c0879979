"""Fine-tune a causal language model on a chat dataset with the Hugging Face Trainer.

    python examples/finetune_hf.py --model Qwen/Qwen3-30B-A3B --data chats.jsonl --output_dir finetuned

Each line of --data is {"messages": [{"role": ..., "content": ...}, ...]}. finetune_moeforge.py is
this script with the imports changed to moeforge's. Prints one JSON line: losses, steps, time.
"""
import argparse
import json
import time

from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder or Hugging Face model id")
    parser.add_argument("--data", required=True, help="JSONL file of {'messages': [...]} lines")
    parser.add_argument("--output_dir", default="finetuned")
    parser.add_argument("--max_steps", type=int, default=50)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--eval_examples", type=int, default=8, help="examples held out for evaluation")
    parser.add_argument("--max_length", type=int, default=512, help="tokens kept per example")
    a = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model)

    with open(a.data, encoding="utf-8") as f:
        conversations = [json.loads(line)["messages"] for line in f if line.strip()]

    def tokenize(messages):
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        input_ids = tokenizer(text, truncation=True, max_length=a.max_length)["input_ids"]
        return {"input_ids": input_ids, "labels": list(input_ids)}

    examples = [tokenize(m) for m in conversations]
    held_out, train = examples[:a.eval_examples], examples[a.eval_examples:]

    args = TrainingArguments(
        output_dir=a.output_dir,
        max_steps=a.max_steps,
        per_device_train_batch_size=1,
        per_device_eval_batch_size=1,  # examples differ in length and the default collator does not pad
        gradient_accumulation_steps=1,
        learning_rate=a.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=2,
        weight_decay=0.0,
        logging_steps=5,
        save_steps=1000,
        seed=42,
        report_to="none",
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=held_out)
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    metrics = trainer.evaluate()
    trainer.save_model(a.output_dir)
    print(json.dumps({"train_loss": result.training_loss, "eval_loss": metrics["eval_loss"],
                      "steps": result.global_step, "train_seconds": round(seconds, 3)}))


if __name__ == "__main__":
    main()
